"""Bot + sandbox on loopback, wired as in production: the demo, the contract tests and the
benchmarks drive the bot through this, only by encrypted callbacks and HTTP."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path

from sqlalchemy import Engine

from bot.app import create_app
from bot.bootstrap import Container, bootstrap
from bot.clock import Clock, SystemClock
from bot.config import Settings
from bot.sandbox.backend import WeComBackend
from bot.sandbox.driver import Driver
from bot.sandbox.routes import create_sandbox_app
from bot.sandbox.rules import Rules
from bot.sandbox.seed import new_corp, seed_stores
from bot.serving import ServerThread, free_port


class Harness:
    def __init__(self, *, database_url: str, stores: Iterable[dict], clock: Clock | None = None,
                 calendar_dir: str | Path | None = None, rules: Rules | None = None, workers: bool = True,
                 engine_factory: Callable[[str], Engine] | None = None, settings_overrides: dict | None = None):
        self.clock = clock or SystemClock()
        self.corp = new_corp()
        self.backend = WeComBackend(self.corp, self.clock, rules)
        self.sandbox_app = create_sandbox_app(self.backend)
        self.database_url = database_url
        self.stores = list(stores)
        self.calendar_dir = Path(calendar_dir or "content_calendar").resolve()
        self.with_workers = workers
        self.engine_factory = engine_factory
        self.overrides = settings_overrides or {}
        self.sandbox: ServerThread | None = None
        self.bot: ServerThread | None = None
        self.c: Container | None = None

    def settings(self) -> Settings:
        corp = self.corp
        raw = {
            "database_url": self.database_url, "admin_token": "harness", "calendar_dir": str(self.calendar_dir),
            "wecom": {"corp_id": corp.corp_id, "agent_id": corp.agent_id, "secret": corp.secret,
                      "token": corp.token, "encoding_aes_key": corp.encoding_aes_key,
                      "api_base_url": f"{self.sandbox.url}/cgi-bin/", "timeout_seconds": 5},
            "stores": self.stores, "public_base_url": f"http://127.0.0.1:{self.bot_port}",
            # the sandbox's login pages stand in for WeCom's (bot/sandbox/auth.py)
            "admin": {"oauth_authorize_url": f"{self.sandbox.url}/connect/oauth2/authorize",
                      "web_login_url": f"{self.sandbox.url}/wwlogin/sso/login"},
        }
        for key, value in self.overrides.items():
            raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
        return Settings.model_validate(raw)

    def start(self, seed: bool = True) -> Harness:
        self.sandbox = ServerThread(self.sandbox_app).start()
        self.bot_port = free_port()  # known before the bot starts: links in its messages point here
        self.backend.public_url = self.sandbox.url
        self.cfg = self.settings()
        if seed:
            self.groups = seed_stores(self.backend, self.cfg.stores)
        self.start_bot()
        return self

    def start_bot(self) -> Container:
        engine = self.engine_factory(self.database_url) if self.engine_factory else None
        self.c = bootstrap(self.cfg, clock=self.clock, engine=engine, migrate=True)
        self.bot = ServerThread(create_app(self.c), port=self.bot_port).start()
        self.driver = Driver(self.backend, f"{self.bot.url}/wecom/callback")
        self.sandbox_app.state.driver = self.driver
        if self.with_workers:
            self.c.start_workers()
        return self.c

    def stop_bot(self) -> None:
        """As a crash or a deploy would: the process goes, the database stays."""
        if self.bot:
            self.bot.stop()
        if self.c:
            self.c.close()
        self.bot = self.c = None

    def restart_bot(self) -> Container:
        self.stop_bot()
        return self.start_bot()

    def sync(self):
        return self.c.provisioner().sync(self.cfg.stores)

    def pump(self, rounds: int = 100) -> int:
        """Without background workers: dispatch events and send outbox rows until nothing is due."""
        dispatcher, worker, done = self.c.dispatcher("pump"), self.c.outbox_worker("pump"), 0
        for _ in range(rounds):
            n = dispatcher.run_once() + worker.run_once()
            done += n
            if not n:
                break
        return done

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Wait (real time) for background work; with workers off, pump instead."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.with_workers:
                self.pump()
            if predicate():
                return True
            time.sleep(0.02)
        return predicate()

    def stop(self) -> None:
        self.stop_bot()
        if self.sandbox:
            self.sandbox.stop()

    def __enter__(self) -> Harness:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
