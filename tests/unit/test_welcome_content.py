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
    content.reload_if_changed()          # the scheduler's 10-second tick, not the welcome, reloads
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
    # told at load, as file:line, before a customer gets the fallback
    assert content.last_error.startswith(f"{tmp_path / 'templates' / 'mine.j2'}:1: welcome template 'mine.j2'")
    assert "'no_such_variable' is undefined" in content.last_error


def test_an_edited_template_is_checked_on_reload(tmp_path):
    content = make(tmp_path, "welcome:\n  template: mine.j2\n")
    (tmp_path / "templates" / "mine.j2").write_text("{{ store.name }}好", encoding="utf-8")
    content._stamp = ()
    content.reload_if_changed()
    assert content.last_error is None
    (tmp_path / "templates" / "mine.j2").write_text("好\n{{ store.__class__ }}", encoding="utf-8")
    os.utime(tmp_path / "templates" / "mine.j2", ns=(1, 1))          # a new stamp without sleeping
    content.reload_if_changed()
    assert content.last_error and ":2: welcome template 'mine.j2'" in content.last_error and "unsafe" in content.last_error


def test_text_is_capped_at_4000_bytes(tmp_path):
    content = make(tmp_path, "welcome:\n  benefit: " + "券" * 3000 + "\n")
    assert len(content.render(store_code="S", store_name="店", clerk="u").text.encode()) <= 4000


def test_attach_group_qr_no_is_the_same_mistake_here_as_in_check(tmp_path):
    """One reader for content_calendar/: YAML 1.2 keeps `no` a word, which the schema refuses as a
    boolean; before, the welcome read it as YAML 1.1 False while `check` called it an error."""
    content = make(tmp_path)
    (tmp_path / "stores").mkdir(exist_ok=True)
    (tmp_path / "stores" / "SZ001.yaml").write_text("welcome:\n  attach_group_qr: no\n", encoding="utf-8")
    content.reload_if_changed()
    assert content.last_error and "SZ001.yaml:2" in content.last_error and "attach_group_qr" in content.last_error
    assert content.spec_for("SZ001").attach_group_qr is True     # the last good content keeps running
