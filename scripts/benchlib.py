"""What the benchmarks share: the bot and the sandbox as separate processes on loopback, on SQLite
or on a fresh PostgreSQL schema, and wrk with its figures parsed."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.sandbox.backend import Corp  # noqa: E402
from bot.sandbox.seed import new_corp  # noqa: E402

PG_URL = os.environ.get("WECOM_BOT_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
STORES = [{"code": f"S{i:03d}", "name": f"门店{i}", "clerks": [f"clerk{i}"]} for i in range(20)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def write_config(path: Path, corp: Corp, db_url: str, sandbox_port: int, bot_port: int,
                 extra: dict | None = None) -> None:
    path.write_text(json.dumps({  # JSON is YAML
        **(extra or {}),
        "database_url": db_url, "public_base_url": f"http://127.0.0.1:{bot_port}",
        "admin_token": secrets.token_hex(8), "calendar_dir": str(ROOT / "content_calendar"),
        "wecom": {"corp_id": corp.corp_id, "agent_id": corp.agent_id, "secret": corp.secret, "token": corp.token,
                  "encoding_aes_key": corp.encoding_aes_key,
                  "api_base_url": f"http://127.0.0.1:{sandbox_port}/cgi-bin/"},
        # the bench's crowd signs up from one address: no per-address limit here
        "pages": {"orders_per_address_per_minute": 0, "orders_per_buyer_per_minute": 0},
        "stores": STORES}, ensure_ascii=False), encoding="utf-8")


@dataclass
class Services:
    db_url: str
    corp: Corp
    config: Path
    sandbox: str
    bot: str
    tmp: Path
    pids: dict[str, int] = field(default_factory=dict)   # "sandbox", "serve-all" / "serve-web" / ...: to profile

    def cli(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bot", "--config", str(self.config), *args],
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True,
                              stdout=subprocess.DEVNULL, **kw)


def fresh_database(db: str, tmp: Path) -> tuple[str, Callable[[], None]]:
    """A new SQLite file under `tmp`, or a new PostgreSQL schema: its URL and how to drop it."""
    if db == "sqlite":
        return f"sqlite:///{tmp / 'bench.db'}", lambda: None
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))

    def drop() -> None:
        with admin.connect() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()

    return f"{PG_URL}?options=-csearch_path%3D{schema}", drop


@contextmanager
def sandbox_and_bot(db: str, roles: tuple[str, ...] = ("all",), config: dict | None = None):
    """`wecom-bot sandbox` and `wecom-bot serve` as processes, on a fresh database: one `serve` per
    entry of `roles` (default one `--role all`; e.g. ("web", "worker") on PostgreSQL for the
    scale-out shape). The first role serves the bot's URL; the others get ports of their own.
    `config`: keys added to the bot's config (e.g. {"access_log": False})."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    db_url, drop_database = fresh_database(db, tmp)
    corp = new_corp()
    sandbox_port, bot_port = free_port(), free_port()
    cfg = tmp / "config.yaml"
    write_config(cfg, corp, db_url, sandbox_port, bot_port, config)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cli = [sys.executable, "-m", "bot", "--config", str(cfg)]
    procs = {"sandbox": subprocess.Popen(cli + ["sandbox"], env=env, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)}
    try:
        wait_http(f"http://127.0.0.1:{sandbox_port}/_sandbox/state")
        for i, role in enumerate(roles):   # one after the other: the first migrates, the rest find it done
            port = bot_port if i == 0 else free_port()
            name = f"serve-{role}" if f"serve-{role}" not in procs else f"serve-{role}-{i}"
            procs[name] = subprocess.Popen(
                cli + ["serve", "--role", role, "--port", str(port)], env=env,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_http(f"http://127.0.0.1:{port}/{'healthz' if role in ('all', 'web') else 'metrics'}")
        yield Services(db_url, corp, cfg, f"http://127.0.0.1:{sandbox_port}", f"http://127.0.0.1:{bot_port}", tmp,
                       {name: p.pid for name, p in procs.items()})
    finally:
        for p in procs.values():
            p.send_signal(signal.SIGINT)
        for p in procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        drop_database()
        shutil.rmtree(tmp, ignore_errors=True)


def wrk_command(url: str, seconds: int, connections: int, script: Path | None = None, args: list[str] = ()) -> list[str]:
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    if script:
        cmd += ["-s", str(script)]
    return cmd + [url, *(["--", *args] if args else [])]


def parse_wrk(out: str) -> dict:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def pct(p):
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v

    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    wrapped = re.search(r"wrapped=(\d+)", out)
    return {"rps": rps, "p50": pct(50), "p99": pct(99), "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "wrapped": int(wrapped.group(1)) if wrapped else 0, "raw": out}


def run_wrk(url: str, seconds: int, connections: int, script: Path | None = None, args: list[str] = ()) -> dict:
    out = subprocess.run(wrk_command(url, seconds, connections, script, args), capture_output=True, text=True,
                         check=True).stdout
    return parse_wrk(out)


def require_wrk() -> None:
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")
