"""`wecom-bot serve --role …` as real processes (issue 16): on SQLite one `serve` per database file
(a second one, of any role, refuses at start and says why; short-lived commands keep working), on
PostgreSQL web and worker processes side by side."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from bot.db.engine import make_engine, make_session_factory
from bot.db.models import SchedulerLease, WorkerProcess
from bot.sandbox.driver import Driver
from bot.scheduler import LEASE_NAME
from bot.sandbox.rules import Rules
from bot.serving import free_port
from tests.contract.test_chaos import ROOT, Bot, setting_up, wait_until

pytestmark = pytest.mark.slow   # a dozen Python processes started: -m "not slow" leaves it out, as the chaos tests

STORES = [{"code": f"S{i:03d}", "name": f"门店{i}", "clerks": [f"clerk{i}"]} for i in range(3)]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


class Served(Bot):
    """`serve --role ROLE`, logging at INFO (the lease and claim lines are the processes' own run log).
    A web role is up when it answers /livez; a worker once its heartbeat row is in; a scheduler once
    it holds the lease (a standby waiting for a dead holder's lease: start(wait=False))."""

    def __init__(self, cfg: Path, port: int, log: Path, role: str, db_url: str):
        super().__init__(cfg, port, log)
        self.role, self.db_url = role, db_url

    def start(self, wait: bool = True) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "bot", "--config", str(self.cfg), "-v", "serve",
                                      "--port", str(self.port), "--role", self.role], env=ENV,
                                     stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready()

    def ready(self) -> bool:
        assert self.proc.poll() is None, f"serve --role {self.role} exited:\n{self.log.read_text()[-3000:]}"
        if self.role in ("web", "all"):
            try:
                return httpx.get(f"http://127.0.0.1:{self.port}/livez", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False
        engine = make_engine(self.db_url)
        try:
            with make_session_factory(engine)() as s:
                if self.role == "worker":
                    return s.scalar(select(WorkerProcess.id).where(WorkerProcess.pid == self.proc.pid)) is not None
                holder = s.scalar(select(SchedulerLease.holder).where(SchedulerLease.name == LEASE_NAME))
                return holder is not None and f":{self.proc.pid}:" in holder
        finally:
            engine.dispose()

    def wait_ready(self, timeout: float = 90) -> None:   # generous: a loaded 2-core machine starts slowly
        assert wait_until(self.ready, timeout), \
            f"serve --role {self.role} did not come up:\n{self.log.read_text(errors='replace')[-3000:]}"


def cli(cfg: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bot", "--config", str(cfg), *args], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(*procs: subprocess.Popen) -> list[tuple[int, str]]:
    """Started together (the machine has few cores; each start is a Python import), awaited together."""
    out = []
    for p in procs:
        try:
            out.append((p.communicate(timeout=90)[1], p.returncode)[::-1])
        except subprocess.TimeoutExpired:
            p.kill()
            raise AssertionError(f"{p.args[3:]} still running after 90 s") from None
    return out


def seeded(db_url: str, tmp: Path):
    backend, sandbox, settings, bot = setting_up(db_url, tmp, STORES, Rules())
    for st in STORES:
        backend.add_clerk(st["clerks"][0])
        backend.create_group(st["clerks"][0], f"{st['name']}福利群", members=20)
    return backend, sandbox, settings, bot


def welcomed(backend, driver: Driver, state: str) -> bool:
    added = driver.member_adds_clerk(state)
    assert added.acked, added.statuses
    ext = added.fields["ExternalUserID"]
    return wait_until(lambda: any(w["external_userid"] == ext for w in backend.welcomes), 30)


def test_a_second_serve_on_one_sqlite_file_refuses_and_the_first_keeps_serving(sqlite_url, tmp_path):
    db_url = sqlite_url
    backend, sandbox, _settings, _bot = seeded(db_url, tmp_path)
    first = Served(_bot.cfg, _bot.port, tmp_path / "serve-all.log", "all", db_url)
    try:
        first.start()
        roles = ("all", "web", "worker", "scheduler")
        seconds = finished(*(cli(first.cfg, "serve", "--role", role, "--port", str(free_port())) for role in roles))
        for role, (rc, err) in zip(roles, seconds):
            assert rc == 2, (role, rc, err[-2000:])
            assert "SQLite runs one `serve` with `--role all`" in err and "need PostgreSQL" in err, err
            assert f":{first.proc.pid}:" in err, err                       # it names the one serving
        # short-lived commands are not serve: they run beside it
        assert finished(cli(first.cfg, "sync"))[0][0] == 0
        for rc, err in finished(cli(first.cfg, "report"), cli(first.cfg, "qr", "check"), cli(first.cfg, "db", "upgrade")):
            assert rc == 0, err[-2000:]
        assert first.proc.poll() is None
        assert welcomed(backend, Driver(backend, f"http://127.0.0.1:{first.port}/wecom/callback"), STORES[0]["code"])
        # once the first is gone (even killed: the kernel drops its lock), a new one starts
        first.kill9()
        first.start()
        assert welcomed(backend, Driver(backend, f"http://127.0.0.1:{first.port}/wecom/callback"), STORES[1]["code"])
    finally:
        first.stop()
        sandbox.stop()


@pytest.mark.pg
def test_web_and_worker_processes_serve_side_by_side_on_postgresql(pg_url, tmp_path):
    db_url = pg_url
    backend, sandbox, _settings, bot = seeded(db_url, tmp_path)
    assert finished(cli(bot.cfg, "db", "upgrade"))[0][0] == 0     # so the three do not all wait on the migrate lock
    procs = [Served(bot.cfg, bot.port, tmp_path / "web-1.log", "web", db_url),
             Served(bot.cfg, free_port(), tmp_path / "web-2.log", "web", db_url),
             Served(bot.cfg, free_port(), tmp_path / "worker.log", "worker", db_url)]
    try:
        for p in procs:
            p.start(wait=False)
        for p in procs:
            p.wait_ready()
        assert finished(cli(bot.cfg, "sync"))[0][0] == 0
        for web, st in zip(procs[:2], STORES):   # each web process takes callbacks; the worker welcomes
            assert welcomed(backend, Driver(backend, f"http://127.0.0.1:{web.port}/wecom/callback"), st["code"])
        assert all(p.proc.poll() is None for p in procs)
    finally:
        for p in procs:
            p.stop()
        sandbox.stop()
