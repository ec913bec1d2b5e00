"""The command line as an operator uses it."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bot.cli import main
from bot.clock import SystemClock
from bot.sandbox.backend import Corp, WeComBackend
from bot.sandbox.routes import create_sandbox_app
from bot.sandbox.seed import seed_stores
from bot.config import load_settings
from bot.serving import ServerThread

ROOT = Path(__file__).resolve().parents[2]


def config_for(tmp_path, db_url, api_base_url="http://127.0.0.1:9/cgi-bin/", extra=""):
    p = tmp_path / "config.yaml"
    p.write_text(f"""
database_url: "{db_url}"
admin_token: change-me
calendar_dir: {ROOT / 'content_calendar'}
wecom:
  corp_id: wwclitest
  agent_id: 1000002
  secret: cli-secret
  token: clitoken
  encoding_aes_key: abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG
  api_base_url: {api_base_url}
stores:
  - {{code: SZ001, name: 深圳科技园店, clerks: [zhangsan]}}
  - {{code: SZ002, name: 深圳海岸城店, clerks: [lisi, wangwu]}}
{extra}""", encoding="utf-8")
    return p


def test_db_upgrade(tmp_path, db_url, capsys):
    head = max(p.name[:4] for p in (ROOT / "bot" / "db" / "migrations" / "versions").glob("0*.py"))
    assert main(["--config", str(config_for(tmp_path, db_url)), "db", "upgrade"]) == 0
    assert f"database at revision {head}" in capsys.readouterr().out


def test_sync_through_the_cli_against_the_sandbox(tmp_path, db_url, capsys):
    settings = load_settings(config_for(tmp_path, db_url), environ={})
    w = settings.wecom
    backend = WeComBackend(Corp(w.corp_id, w.secret.get_secret_value(), w.agent_id, w.token.get_secret_value(),
                                w.encoding_aes_key.get_secret_value()), SystemClock())
    sandbox = ServerThread(create_sandbox_app(backend)).start()
    backend.public_url = sandbox.url
    seed_stores(backend, settings.stores)
    try:
        cfg = config_for(tmp_path, db_url, f"{sandbox.url}/cgi-bin/")
        assert main(["--config", str(cfg), "sync"]) == 0
        out = capsys.readouterr().out
        assert "[2/2]" in out and "2 changed" in out
        assert main(["--config", str(cfg), "sync"]) == 0
        assert "0 changed (0 changes), 2 unchanged" in capsys.readouterr().out
    finally:
        sandbox.stop()


def test_serve_refuses_the_placeholder_admin_token(tmp_path, capsys):
    cfg = config_for(tmp_path, f"sqlite:///{tmp_path / 'x.db'}")
    assert main(["--config", str(cfg), "serve"]) == 1
    assert "admin_token" in capsys.readouterr().err


PLACEHOLDER_REFUSED = "admin_token: still the placeholder 'change-me'"


@pytest.mark.parametrize("argv,name", [(["serve"], "serve"), (["slot", "fire", "10:00"], "slot fire"),
                                       (["slot", "fire", "10:00", "--no-send"], "slot fire"), (["qr", "check"], "qr check")],
                         ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_every_command_that_mints_links_refuses_the_placeholder_admin_token(tmp_path, capsys, argv, name):
    """Links are signed with a key derived from admin_token: under the placeholder, `slot fire` used to
    queue sidebar links that serve (configured properly) then rejected."""
    db = tmp_path / "x.db"
    cfg = config_for(tmp_path, f"sqlite:///{db}")
    assert main(argv + ["--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert f"{cfg}: {PLACEHOLDER_REFUSED}" in err and f"before `{name}`" in err
    assert not db.exists()        # refused before bootstrap: nothing queued, no database made


def test_commands_that_mint_no_links_run_with_the_placeholder(tmp_path, db_url, capsys):
    cfg = config_for(tmp_path, db_url)
    assert main(["db", "upgrade", "--config", str(cfg)]) == 0
    assert main(["check", "--config", str(cfg)]) == 0
    assert PLACEHOLDER_REFUSED not in capsys.readouterr().err


def test_slot_fire_with_a_real_admin_token_is_not_refused(tmp_path, capsys):
    cfg = config_for(tmp_path, f"sqlite:///{tmp_path / 'x.db'}", extra="").read_text(encoding="utf-8")
    p = tmp_path / "real.yaml"
    p.write_text(cfg.replace("admin_token: change-me", "admin_token: a-real-token-4f9c"), encoding="utf-8")
    assert main(["slot", "fire", "10:00", "--date", "2026-11-23", "--no-send", "--config", str(p)]) == 0
    assert PLACEHOLDER_REFUSED not in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["--config", "{cfg}", "db", "upgrade"],
    ["db", "upgrade", "--config", "{cfg}"],
    ["db", "--config", "{cfg}", "upgrade"],
    ["--config", "{other}", "db", "upgrade", "--config", "{cfg}"],   # the subcommand's, when given, wins
    ["-v", "db", "upgrade", "--config", "{cfg}"],
    ["db", "upgrade", "-v", "--config", "{cfg}"],
], ids=lambda a: " ".join(a))
def test_config_is_taken_before_or_after_the_subcommand(tmp_path, capsys, argv):
    cfg = config_for(tmp_path, f"sqlite:///{tmp_path / 'x.db'}")
    assert main([a.format(cfg=cfg, other=tmp_path / "nope.yaml") for a in argv]) == 0
    assert f"({'sqlite:///' + str(tmp_path / 'x.db')})" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["serve", "--config", "{nope}"], ["check", "--config", "{nope}"],
                                  ["slot", "fire", "10:00", "--config", "{nope}"], ["qr", "check", "--config", "{nope}"],
                                  ["report", "--config", "{nope}"], ["sync", "--config", "{nope}"],
                                  ["sandbox", "--config", "{nope}"]], ids=lambda a: " ".join(a[:2]))
def test_every_subcommand_reads_the_config_it_is_given_after_it(tmp_path, capsys, argv):
    nope = tmp_path / "given-after.yaml"
    assert main([a.format(nope=nope) for a in argv]) in (1, 2)
    err = capsys.readouterr().err
    assert f"{nope}: config file not found" in err


def test_wecom_bot_config_names_the_file_when_no_option_is_given(tmp_path, capsys, monkeypatch):
    cfg = config_for(tmp_path, f"sqlite:///{tmp_path / 'x.db'}")
    monkeypatch.chdir(tmp_path / "..")          # no ./config.yaml to fall back on
    monkeypatch.setenv("WECOM_BOT_CONFIG", str(cfg))
    assert main(["db", "upgrade"]) == 0
    assert str(tmp_path / "x.db") in capsys.readouterr().out
    monkeypatch.setenv("WECOM_BOT_CONFIG", str(tmp_path / "nope.yaml"))
    assert main(["db", "upgrade", "--config", str(cfg)]) == 0             # the option beats the variable
    assert main(["db", "upgrade"]) == 2
    assert f"{tmp_path / 'nope.yaml'}: config file not found" in capsys.readouterr().err


def test_config_errors_exit_2_with_key_and_file(tmp_path, capsys):
    cfg = config_for(tmp_path, "sqlite:///x.db", extra="qr_health: {window: 5}\n")
    assert main(["--config", str(cfg), "db", "upgrade"]) == 2
    err = capsys.readouterr().err
    assert str(cfg) in err and "qr_health.window: unknown key" in err


def test_missing_config_file(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "nope.yaml"), "sync"]) == 2
    assert "config file not found" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_runs_and_summarises():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "bot", "demo", "--members", "24"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "echo matches" in out and "second run: 3 stores synced" in out and "0 changed" in out
    assert "welcomes expired          0" in out and "failed                    0" in out
    assert "tapped 「扫码进不了群？告诉店员」" in out and "customers the bot alerted zhaoliu" in out
    assert "顾客反馈扫码进不了群" in out
    assert "all-clear to zhaoliu" in out and "QR findings: none open" in out
    assert "after 5 customers the bot alerted zhaoliu" in out and "【顾客进不了群】" in out
    assert "the 5 customers it stranded get the working group QR again" in out   # the silent adds before the reports too
    assert "6b. The morning digest" in out and "【早报】" in out
    assert "the counter QR of SZ002 now reaches lisi" in out and "2/2 of wangwu's groups now belong to lisi" in out
    # whichever weekday's calendar it is, each owner's groups get their one mass message of the day
    assert "the day's mass message tasks by sender (one mass message per group a day): lisi 1, zhangsan 1, zhaoliu 1" in out
    assert "group-QR page             2 opened, 2 reported" in out and "handover                  wangwu → lisi" in out
    assert "HTTP [200, 200, 200]" in out
    assert re.search(r"ops console +http://127\.0\.0\.1:\d+/admin +\(WeCom login through the sandbox, as zhangsan", out)


def _gave_up_rows(db_url):
    """One dead outbox row that may have reached WeCom, one dead one that did not, one done row and
    one failed event, as the workers leave them."""
    from datetime import datetime, timedelta, timezone

    from bot.db.engine import make_engine, make_session_factory
    from bot.db.models import Event, Outbox

    t = datetime(2026, 11, 23, 1, 0, tzinfo=timezone.utc)
    engine = make_engine(db_url)
    with make_session_factory(engine).begin() as s:
        s.add_all([
            Outbox(key="tmpl:2026-11-23:10:00:zhangsan", kind="add_msg_template", status="dead", uncertain=True,
                   created_at=t, next_attempt_at=t, done_at=t + timedelta(minutes=5), attempts=9,
                   last_errcode=45009, last_error="too many attempts"),
            Outbox(key="reply:m1", kind="app_message", status="dead", created_at=t, next_attempt_at=t,
                   done_at=t + timedelta(minutes=9), attempts=3, last_errcode=81013, last_error="all invalid"),
            Outbox(key="reply:m2", kind="app_message", status="done", created_at=t, next_attempt_at=t, done_at=t),
            Event(delivery_key="k1", kind="change_external_chat/update", payload="<xml/>", received_at=t,
                  next_attempt_at=t, status="failed", attempts=6, last_error="KeyError: 'ChatId'"),
        ])
    with make_session_factory(engine)() as s:
        ids = {r.key: r.id for r in s.query(Outbox)} | {"event": s.query(Event).one().id}
    return engine, ids


def test_dead_lists_failed_events_and_dead_outbox_rows_newest_first(tmp_path, db_url, capsys):
    cfg = str(config_for(tmp_path, db_url))
    assert main(["db", "upgrade", "--config", cfg]) == 0
    assert main(["dead", "--config", cfg]) == 0
    assert "nothing gave up" in capsys.readouterr().out
    engine, ids = _gave_up_rows(db_url)
    engine.dispose()
    assert main(["dead", "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert "1 failed events; retry one with --event ID" in out and "2 dead outbox rows; retry one with --retry ID" in out
    assert f"event {ids['event']}  2026-11-23 09:00:00  change_external_chat/update  k1  attempts 6  KeyError" in out
    newest = out.index(f"outbox {ids['reply:m1']}  2026-11-23 09:09:00  app_message  reply:m1  attempts 3 errcode 81013")
    older = out.index(f"outbox {ids['tmpl:2026-11-23:10:00:zhangsan']}  2026-11-23 09:05:00  add_msg_template")
    assert newest < older and "errcode 45009 uncertain  too many attempts" in out and "reply:m2" not in out
    assert main(["dead", "--json", "--limit", "1", "--config", cfg]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["dead_outbox_rows"] == 2 and [r["key"] for r in listed["outbox"]] == ["reply:m1"]
    assert listed["events"][0]["error"] == "KeyError: 'ChatId'"


def test_dead_retry_puts_the_row_back_to_pending_and_keeps_it_uncertain(tmp_path, db_url, capsys):
    from bot.db.engine import make_session_factory
    from bot.db.models import Event, Outbox

    cfg = str(config_for(tmp_path, db_url))
    assert main(["db", "upgrade", "--config", cfg]) == 0
    engine, ids = _gave_up_rows(db_url)
    tmpl = ids["tmpl:2026-11-23:10:00:zhangsan"]
    try:
        assert main(["dead", "--retry", str(tmpl), "--config", cfg]) == 0
        out = capsys.readouterr().out
        assert f"outbox {tmpl} add_msg_template tmpl:2026-11-23:10:00:zhangsan: back to pending" in out
        assert "uncertain, so WeCom is asked first" in out
        assert main(["dead", "--event", str(ids["event"]), "--config", cfg]) == 0
        assert f"event {ids['event']} change_external_chat/update: back to pending" in capsys.readouterr().out
        with make_session_factory(engine)() as s:
            row, evt = s.get(Outbox, tmpl), s.get(Event, ids["event"])
            assert (row.status, row.attempts, row.uncertain, row.done_at) == ("pending", 0, True, None)
            assert (evt.status, evt.attempts) == ("pending", 0)
            assert s.get(Outbox, ids["reply:m1"]).status == "dead"          # only the one asked for
        # a second retry, or a row that never gave up: refused, nothing touched
        assert main(["dead", "--retry", str(tmpl), "--config", cfg]) == 1
        assert f"outbox {tmpl} is pending, not dead: nothing retried" in capsys.readouterr().err
        assert main(["dead", "--retry", str(ids["reply:m2"]), "--config", cfg]) == 1
        assert main(["dead", "--retry", "99999", "--config", cfg]) == 1
        assert "outbox 99999: no such row" in capsys.readouterr().err
        assert main(["dead", "--config", cfg]) == 0
        assert "1 dead outbox rows" in capsys.readouterr().out
    finally:
        engine.dispose()
