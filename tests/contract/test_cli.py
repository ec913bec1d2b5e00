"""The command line as an operator uses it."""

import os
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
    assert main(["--config", str(config_for(tmp_path, db_url)), "db", "upgrade"]) == 0
    assert "database at revision 0004" in capsys.readouterr().out


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
    assert "customers added the clerk and could not join; the bot alerted zhaoliu" in out
    assert "all-clear to zhaoliu" in out and "QR findings: none open" in out
    assert "HTTP [200, 200, 200]" in out
