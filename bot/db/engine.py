"""Engines: SQLite (WAL) by default, PostgreSQL through database_url."""

from __future__ import annotations

import threading
from collections import deque
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

READ_ONLY = "wecom_bot_read_only"
URGENT = "wecom_bot_urgent"  # writers someone is waiting on (callback acknowledgements) go first


class FairLock:
    """A FIFO lock: release hands the lock to the longest waiter. threading.Lock is not fair: a
    worker looping over a backlog re-takes it before a waiting callback writer ever wakes."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._waiters: deque[threading.Lock] = deque()
        self._held = False

    def acquire(self, urgent: bool = False) -> None:
        with self._guard:
            if not self._held:
                self._held = True
                return
            baton = threading.Lock()
            baton.acquire()
            if urgent:
                self._waiters.appendleft(baton)
            else:
                self._waiters.append(baton)
        baton.acquire()  # released by the holder: the lock is ours, still marked held

    def release(self) -> None:
        with self._guard:
            if self._waiters:
                self._waiters.popleft().release()
            else:
                self._held = False


# Enough for every thread that may hold a connection at once: the web's threadpool (anyio: 40),
# the workers, the group committers and the scheduler. Past pool_size a connection is opened and
# closed per checkout, and on PostgreSQL that connect costs more than the query.
POOL_SIZE = 48


def make_engine(url: str, **kw) -> Engine:
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               pool_size=kw.pop("pool_size", POOL_SIZE), max_overflow=16, **kw)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")   # readers never block the writer
            cur.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; WAL keeps it safe
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()
            # pysqlite's own transaction handling defers BEGIN; issue it ourselves (below).
            dbapi_conn.isolation_level = None

        # SQLite has one writer at a time. Writers in this process queue on a Python lock, which
        # wakes the next one at once; SQLite's busy handler (for other processes) sleeps in steps
        # of up to 100 ms, which is what a tail latency is made of.
        write_lock = FairLock()
        holders: set[int] = set()  # ids of DBAPI connections inside a write transaction

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            # Writers: BEGIN IMMEDIATE takes the write lock up front, so two writers queue
            # instead of failing on a lock upgrade. Readers (make_read_session_factory) must not
            # hold it: a plain BEGIN reads a WAL snapshot beside the writer.
            if conn.get_execution_options().get(READ_ONLY):
                conn.exec_driver_sql("BEGIN")
                return
            dbapi_id = id(conn.connection.dbapi_connection)
            write_lock.acquire(urgent=bool(conn.get_execution_options().get(URGENT)))
            holders.add(dbapi_id)
            try:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            except BaseException:
                holders.discard(dbapi_id)
                write_lock.release()
                raise

        # Release after the real COMMIT/ROLLBACK (the "commit" event fires before it). The pool's
        # rollback-on-return ends every transaction here too, so the lock is never left held.
        dialect = engine.dialect

        def _ending(original):
            def end(dbapi_connection):
                # the pool passes its proxy; statements pass the raw sqlite3 connection
                raw_id = id(getattr(dbapi_connection, "dbapi_connection", dbapi_connection))
                try:
                    original(dbapi_connection)
                finally:
                    if raw_id in holders:
                        holders.discard(raw_id)
                        write_lock.release()
            return end

        dialect.do_commit = _ending(dialect.do_commit)
        dialect.do_rollback = _ending(dialect.do_rollback)

        return engine
    return create_engine(url, pool_size=kw.pop("pool_size", POOL_SIZE), max_overflow=16, pool_pre_ping=True, **kw)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that write (on SQLite their transaction holds the write lock from BEGIN)."""
    return sessionmaker(engine, expire_on_commit=False)


def make_read_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that only read: on SQLite they never take the write lock."""
    return sessionmaker(engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False)


def urgent_of(sessions: sessionmaker[Session]) -> sessionmaker[Session]:
    """The same writes, first in line for SQLite's write lock (someone is waiting on them)."""
    return sessionmaker(sessions.kw["bind"].execution_options(**{URGENT: True}), expire_on_commit=False)


def reads_of(sessions: sessionmaker[Session]) -> sessionmaker[Session]:
    """The read-only twin of a write session factory (same engine and pool)."""
    return make_read_session_factory(sessions.kw["bind"])
