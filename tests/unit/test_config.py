import pytest

from bot.config import ConfigError, load_settings

GOOD = """
wecom:
  corp_id: ww1
  agent_id: 1000002
  secret: s3cret-value
  token: tok
  encoding_aes_key: abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG
stores:
  - {code: SZ001, name: 深圳科技园店, clerks: [zhangsan]}
"""


def write(tmp_path, text, name="config.yaml"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_loads_with_defaults(tmp_path):
    s = load_settings(write(tmp_path, GOOD), environ={})
    assert s.timezone == "Asia/Shanghai" and s.broadcast.receive_cap == "daily_1"
    assert s.stores[0].code == "SZ001"
    assert s.resolved_database_url == f"sqlite:///{tmp_path / 'var' / 'wecom-bot.db'}"


def test_missing_key_names_key_and_file(tmp_path):
    p = write(tmp_path, GOOD.replace("  secret: s3cret-value\n", ""))
    with pytest.raises(ConfigError) as e:
        load_settings(p, environ={})
    assert f"{p}: wecom.secret: missing required key" in str(e.value)


def test_unknown_key_is_an_error(tmp_path):
    p = write(tmp_path, GOOD + "broadcast: {slotz: []}\n")
    with pytest.raises(ConfigError, match=r"broadcast\.slotz: unknown key"):
        load_settings(p, environ={})


def test_env_overrides_nested_and_top_level(tmp_path):
    s = load_settings(write(tmp_path, GOOD), environ={
        "WECOM_BOT_WECOM__SECRET": "from-env", "WECOM_BOT_DATABASE_URL": "postgresql+psycopg://x@h/db",
        "WECOM_BOT_QR_HEALTH__MIN_ADDS": "12"})
    assert s.wecom.secret.get_secret_value() == "from-env"
    assert s.database_url == "postgresql+psycopg://x@h/db" and s.qr_health.min_adds == 12


def test_bad_env_value_names_the_variable(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_settings(write(tmp_path, GOOD), environ={"WECOM_BOT_WECOM__AGENT_ID": "abc"})
    assert "WECOM_BOT_WECOM__AGENT_ID" in str(e.value) and "wecom.agent_id" in str(e.value)


def test_secrets_never_in_repr(tmp_path):
    s = load_settings(write(tmp_path, GOOD), environ={})
    assert "s3cret-value" not in repr(s) and "s3cret-value" not in str(s.model_dump())


def test_broken_yaml_gives_file_and_line(tmp_path):
    p = write(tmp_path, "wecom:\n  corp_id: [unclosed\n")
    with pytest.raises(ConfigError, match=r"config\.yaml:\d+: invalid YAML"):
        load_settings(p, environ={})


def test_bad_aes_key_and_store_code(tmp_path):
    bad = GOOD.replace("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", "short").replace("SZ001", "X" * 31)
    with pytest.raises(ConfigError) as e:
        load_settings(write(tmp_path, bad), environ={})
    assert "wecom.encoding_aes_key" in str(e.value) and "stores.0.code" in str(e.value)


def test_stores_file_csv(tmp_path):
    write(tmp_path, "code,name,clerks,benefit\nSZ001,科技园店,zhangsan|lisi,券\nSZ002,南山店,wangwu,\n", "stores.csv")
    s = load_settings(write(tmp_path, GOOD.split("stores:")[0] + "stores_file: stores.csv\n"), environ={})
    assert [(x.code, x.clerks, x.benefit) for x in s.stores] == [("SZ001", ["zhangsan", "lisi"], "券"),
                                                                  ("SZ002", ["wangwu"], None)]


def test_repo_config_is_valid():
    from pathlib import Path
    s = load_settings(Path(__file__).resolve().parents[2] / "config.yaml", environ={})
    assert s.stores


def test_fair_lock_is_fifo_and_urgent_writers_go_first():
    import threading
    import time

    from bot.db.engine import FairLock

    lock, order = FairLock(), []
    lock.acquire()

    def take(name, urgent=False):
        lock.acquire(urgent=urgent)
        order.append(name)
        lock.release()

    threads = []
    for name, urgent in (("a", False), ("b", False), ("ack", True)):
        t = threading.Thread(target=take, args=(name, urgent))
        t.start()
        threads.append(t)
        time.sleep(0.05)        # queue in this order
    lock.release()
    for t in threads:
        t.join()
    assert order == ["ack", "a", "b"]
