import os
import time

from bot.welcome.content import WelcomeContent


def make(tmp_path, default="welcome:\n  benefit: 入群领券\n"):
    (tmp_path / "templates").mkdir()
    (tmp_path / "stores").mkdir()
    (tmp_path / "default.yaml").write_text(default, encoding="utf-8")
    return WelcomeContent(tmp_path)


def test_builtin_template_renders_store_and_benefit(tmp_path):
    w = make(tmp_path).render(store_code="SZ001", store_name="深圳科技园店", clerk="zhangsan")
    assert "深圳科技园店" in w.text and "入群领券" in w.text and w.attach_group_qr


def test_store_override_wins_and_config_benefit_beats_both(tmp_path):
    content = make(tmp_path)
    (tmp_path / "stores" / "SZ001.yaml").write_text("welcome:\n  benefit: 科技园专享\n  attach_group_qr: false\n",
                                                   encoding="utf-8")
    content.reload_if_changed()
    w = content.render(store_code="SZ001", store_name="店", clerk="u")
    assert "科技园专享" in w.text and not w.attach_group_qr
    assert "门店券" in content.render(store_code="SZ001", store_name="店", clerk="u", store_benefit="门店券").text
    assert "入群领券" in content.render(store_code="SZ002", store_name="店", clerk="u").text


def test_broken_edit_keeps_last_good(tmp_path):
    content = make(tmp_path)
    time.sleep(0.01)
    (tmp_path / "default.yaml").write_text("welcome: [broken\n", encoding="utf-8")
    os.utime(tmp_path / "default.yaml", None)
    w = content.render(store_code="SZ001", store_name="店", clerk="u")
    assert "入群领券" in w.text
    assert content.last_error and "default.yaml:" in content.last_error


def test_failing_template_falls_back_to_builtin(tmp_path):
    content = make(tmp_path, "welcome:\n  template: mine.j2\n")
    (tmp_path / "templates" / "mine.j2").write_text("{{ no_such_variable }}", encoding="utf-8")
    content._stamp = ()
    content.reload_if_changed()
    w = content.render(store_code="SZ001", store_name="深圳店", clerk="u")
    assert "深圳店" in w.text


def test_text_is_capped_at_4000_bytes(tmp_path):
    content = make(tmp_path, "welcome:\n  benefit: " + "券" * 3000 + "\n")
    assert len(content.render(store_code="S", store_name="店", clerk="u").text.encode()) <= 4000


def test_app_text_and_fit_lines_respect_wecoms_byte_limit():
    from bot.text import app_text, fit_lines
    assert len(app_text("u", "名" * 3000)["content"]["content"].encode()) <= 2048
    msg = fit_lines("头", [f"{i}. 王** 尾号1234 ×2 深圳科技园店福利1群" for i in range(200)], "完整表格：http://x/y.csv")
    assert len(msg.encode()) <= 2048 and msg.endswith("完整表格：http://x/y.csv") and "……还有" in msg
