"""Fixtures: every database test runs on SQLite and on PostgreSQL.

PostgreSQL tests skip on a machine without it, but fail when CI=true: the PostgreSQL path must be
proven on every landing. Each PostgreSQL test gets its own schema, dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from bot.clock import SHANGHAI, FakeClock
from bot.db.engine import make_engine
from bot.sandbox.harness import Harness

PG_URL = os.environ.get("WECOM_BOT_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() == "true"
ROOT = Path(__file__).resolve().parents[1]

STORES = [
    {"code": "SZ001", "name": "深圳科技园店", "clerks": ["zhangsan"]},
    {"code": "SZ002", "name": "深圳海岸城店", "clerks": ["lisi", "wangwu"], "benefit": "海岸城店：入群领10元券"},
]

_pg_ok: bool | None = None


def pg_available() -> bool:
    global _pg_ok
    if _pg_ok is None:
        try:
            eng = create_engine(PG_URL, connect_args={"connect_timeout": 3})
            with eng.connect() as conn:
                conn.execute(text("select 1"))
            eng.dispose()
            _pg_ok = True
        except Exception:
            _pg_ok = False
    return _pg_ok


def _pg_schema_url():
    if not pg_available():
        if IN_CI:
            pytest.fail(f"CI=true but PostgreSQL is not reachable at {PG_URL}: the PostgreSQL path must run in CI")
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in PG_URL else "?"
    return admin, schema, f"{PG_URL}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'bot.db'}"
        return
    admin, schema, url = _pg_schema_url()
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path):
    """For a test of what only SQLite does (one `serve` per file)."""
    return f"sqlite:///{tmp_path / 'bot.db'}"


@pytest.fixture
def pg_url():
    """For a test of what only PostgreSQL allows (several processes): fails, not skips, under CI=true."""
    admin, schema, url = _pg_schema_url()
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture
def engine(db_url):
    from bot.db.migrate import upgrade

    eng = make_engine(db_url)
    upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def clock():
    return FakeClock(datetime(2026, 11, 23, 9, 0, 0, tzinfo=SHANGHAI))


@pytest.fixture
def harness(db_url, clock):
    """Bot + sandbox on loopback with a shared fake clock; no background workers (tests pump)."""
    h = Harness(database_url=db_url, stores=STORES, clock=clock, calendar_dir=ROOT / "content_calendar",
                workers=False)
    h.start()
    yield h
    h.stop()


@pytest.fixture
def synced(harness):
    report = harness.sync()
    assert not report.failed, report.summary()
    return harness
