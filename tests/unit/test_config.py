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


@pytest.mark.parametrize("var,value,get", [
    ("WECOM_BOT_ADMIN_TOKEN", "s3cr3t #2024", lambda s: s.admin_token.get_secret_value()),   # YAML cut it at ' #'
    ("WECOM_BOT_WECOM__TOKEN", "0123456", lambda s: s.wecom.token.get_secret_value()),      # YAML made it 123456
    ("WECOM_BOT_WECOM__CORP_ID", "0x1F", lambda s: s.wecom.corp_id),
    ("WECOM_BOT_PUBLIC_BASE_URL", "https://bot.example.cn/a: b", lambda s: s.public_base_url),
    ("WECOM_BOT_DATABASE_URL", "postgresql://u:p%40ss@h/db?x=[1]", lambda s: s.database_url),
    ("WECOM_BOT_ADMIN_TOKEN", "yes", lambda s: s.admin_token.get_secret_value()),           # YAML: True
    ("WECOM_BOT_ADMIN_TOKEN", "null", lambda s: s.admin_token.get_secret_value()),
    ("WECOM_BOT_ADMIN_TOKEN", "", lambda s: s.admin_token.get_secret_value()),
], ids=lambda v: v if isinstance(v, str) else "")
def test_an_env_string_stays_the_exact_string(tmp_path, var, value, get):
    assert get(load_settings(write(tmp_path, GOOD), environ={var: value})) == value


def test_env_numbers_and_json_lists_arrive_as_their_keys_types(tmp_path):
    s = load_settings(write(tmp_path, GOOD), environ={
        "WECOM_BOT_WORKER__THREADS": "8", "WECOM_BOT_QR_HEALTH__ALPHA": "0.01", "WECOM_BOT_WECOM__TIMEOUT_SECONDS": "2",
        "WECOM_BOT_BROADCAST__SLOTS": '["20:00", "10:00"]', "WECOM_BOT_LINK_KEYS": '["old-key-1", "old-key-0"]',
        "WECOM_BOT_TRUSTED_PROXIES": '["10.0.0.1", "192.168.0.0/16"]'})
    assert s.worker.threads == 8 and s.qr_health.alpha == 0.01 and s.wecom.timeout_seconds == 2.0
    assert s.broadcast.slots == ["10:00", "20:00"]
    assert [k.get_secret_value() for k in s.link_keys] == ["old-key-1", "old-key-0"]
    assert s.trusted_proxies == ["10.0.0.1", "192.168.0.0/16"]


def test_env_beats_the_file_and_keeps_the_files_other_keys(tmp_path):
    s = load_settings(write(tmp_path, GOOD + "qr_health: {min_adds: 3, window_minutes: 60}\n"),
                      environ={"WECOM_BOT_QR_HEALTH__MIN_ADDS": "5"})
    assert (s.qr_health.min_adds, s.qr_health.window_minutes) == (5, 60)
    assert s.wecom.secret.get_secret_value() == "s3cret-value"


def test_booleans_in_env_are_parsed_as_booleans():
    """No key is a boolean today; the next one must not be YAML-guessed either."""
    from bot.config import Settings, env_values

    class WithFlag(Settings):
        dry_run: bool = False

    for text, want in [("true", True), ("false", False), ("1", True), ("0", False)]:
        values, _ = env_values(WithFlag, {"WECOM_BOT_DRY_RUN": text})
        assert values == {"dry_run": text}                    # handed on as given …
        assert WithFlag.model_validate({**values, "wecom": {"corp_id": "w", "agent_id": 1, "secret": "s", "token": "t",
                                        "encoding_aes_key": "a" * 43}}).dry_run is want   # … parsed by its type


@pytest.mark.parametrize("var,value,words", [
    ("WECOM_BOT_WORKER__THREADS", "eight", "worker.threads: Input should be a valid integer"),
    ("WECOM_BOT_QR_HEALTH__ALPHA", "0,01", "qr_health.alpha: Input should be a valid number"),
    ("WECOM_BOT_BROADCAST__SLOTS", "10:00,16:00", "broadcast.slots: not valid JSON"),
    ("WECOM_BOT_BROADCAST__SLOTS", '["9:00"]', "broadcast.slots: Value error, slot '9:00' is not HH:MM"),
    ("WECOM_BOT_BROADCAST", '{"slotz": []}', "broadcast.slotz: unknown key"),
])
def test_a_bad_env_value_names_the_file_the_variable_and_the_key(tmp_path, var, value, words):
    p = write(tmp_path, GOOD)
    with pytest.raises(ConfigError) as e:
        load_settings(p, environ={var: value})
    assert f"{p} (with {var}): {words}" in str(e.value)


def test_unknown_wecom_bot_variables_are_ignored_with_a_warning(tmp_path, caplog):
    s = load_settings(write(tmp_path, GOOD), environ={
        "WECOM_BOT_TEST_PG_URL": "postgresql://u:pw-in-url@h/db", "WECOM_BOT_CONFIG": "other.yaml",
        "WECOM_BOT_QR_HEALTH__WINDOW": "5", "WECOM_BOT_SOURCE": "/etc", "WECOM_BOTX": "1", "PATH": "/bin"})
    assert s.qr_health.window_minutes == 120 and s.source == (tmp_path / "config.yaml").resolve()
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("WECOM_BOT_TEST_PG_URL" in w and "ignored" in w for w in warned)
    assert any("WECOM_BOT_QR_HEALTH__WINDOW" in w for w in warned) and any("WECOM_BOT_SOURCE" in w for w in warned)
    assert not any("WECOM_BOT_CONFIG" in w or "PATH" in w for w in warned)   # the file's own variable, not ours
    assert "pw-in-url" not in caplog.text                                    # names only, never values


def test_the_file_stays_strict_when_env_is_lenient(tmp_path):
    p = write(tmp_path, GOOD + "admin_tokn: x\n")
    with pytest.raises(ConfigError) as e:
        load_settings(p, environ={"WECOM_BOT_ADMIN_TOKN": "y"})
    assert f"{p}: admin_tokn: unknown key" in str(e.value)


@pytest.mark.parametrize("var,value,secret", [
    ("WECOM_BOT_WECOM__ENCODING_AES_KEY", "tooShortButSecretAesKey", "tooShortButSecretAesKey"),
    ("WECOM_BOT_WECOM__AGENT_ID", "agent-secret-by-mistake", "agent-secret-by-mistake"),
    ("WECOM_BOT_WECOM", '{"secret": {"nested": "corp-secret-in-json"}}', "corp-secret-in-json"),
    ("WECOM_BOT_LINK_KEYS", '[{"k": "old-link-key-in-json"}]', "old-link-key-in-json"),
    ("WECOM_BOT_LINK_KEYS", "bare-link-key-not-json", "bare-link-key-not-json"),
    ("WECOM_BOT_WECOM", '{"secret": ["corp-secret-in-list"], "agent_id": "x"}', "corp-secret-in-list"),
], ids=lambda v: v[:40])
def test_an_invalid_secret_is_never_echoed(tmp_path, capsys, monkeypatch, var, value, secret):
    """pydantic's own error text (str(ValidationError)) repeats the input: ours must not."""
    from bot.cli import main

    p = write(tmp_path, GOOD)
    with pytest.raises(ConfigError) as e:
        load_settings(p, environ={var: value})
    assert var in str(e.value) and secret not in str(e.value)
    monkeypatch.setenv(var, value)
    assert main(["check", "--config", str(p)]) == 1
    out = capsys.readouterr()
    assert var in out.err and secret not in out.err + out.out


def test_a_secret_from_the_file_is_never_echoed_either(tmp_path):
    p = write(tmp_path, GOOD.replace("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", "file-aes-key-secret")
              .replace("secret: s3cret-value", "secret: [file-corp-secret]"))
    with pytest.raises(ConfigError) as e:
        load_settings(p, environ={})
    assert "wecom.encoding_aes_key" in str(e.value) and "wecom.secret" in str(e.value)
    assert "file-aes-key-secret" not in str(e.value) and "file-corp-secret" not in str(e.value)


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
