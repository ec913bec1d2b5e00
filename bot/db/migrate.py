"""`wecom-bot db upgrade`: Alembic migrations, run programmatically on a given engine.

Every command migrates at start, so several processes starting together migrate together: the
upgrade runs under a lock (PostgreSQL: an advisory lock on Alembic's own connection; SQLite: a
file lock beside the database), and the ones that wait find the schema at head and do nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Engine, text

try:
    import fcntl
except ImportError:  # fcntl is POSIX only: elsewhere the file lock is skipped
    fcntl = None

MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATE_LOCK_KEY = 0x7765636D  # "wecm": pg_advisory_lock key, one per database (shared by its schemas)
# Alembic keeps its migration context in module globals: one upgrade per process at a time.
_upgrading = threading.Lock()


def sqlite_path(engine: Engine) -> Path | None:
    """The database file of a SQLite engine (None for in-memory and for other databases)."""
    if engine.dialect.name != "sqlite":
        return None
    db = engine.url.database
    return Path(db).resolve() if db and db != ":memory:" and not db.startswith("file:") else None


def lock_file(engine: Engine, suffix: str) -> Path | None:
    """`<database file><suffix>` beside a SQLite database, e.g. var/wecom-bot.db.migrate.lock."""
    path = sqlite_path(engine)
    return path.with_name(path.name + suffix) if path else None


@contextmanager
def _file_lock(path: Path | None) -> Iterator[None]:
    if path is None or fcntl is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)   # blocking: wait for the process migrating now
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def _advisory_lock(conn: Connection) -> Iterator[None]:
    # Session-level, not xact: it holds across a migration that commits on its own. It outlives
    # a rollback, so it is released explicitly before the connection goes back to the pool.
    conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATE_LOCK_KEY})
    conn.commit()
    try:
        yield
    finally:
        if conn.in_transaction():
            conn.rollback()
        conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATE_LOCK_KEY})
        conn.commit()


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    # configparser interpolates %: escape it (the URL is informational; the connection is passed in)
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    cfg = alembic_config(engine)
    with _upgrading, _file_lock(lock_file(engine, ".migrate.lock")), engine.connect() as conn:
        lock = _advisory_lock(conn) if conn.dialect.name == "postgresql" else nullcontext()
        with lock:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
            conn.commit()


def current(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
