"""Atomic claims of due rows (events, outbox) by one worker among many processes.

One `UPDATE … WHERE id IN (SELECT … [FOR UPDATE SKIP LOCKED]) RETURNING`: on PostgreSQL SKIP LOCKED
lets workers pass each other; on SQLite the write lock (BEGIN IMMEDIATE) serialises claims. A row
whose lease ran out (its worker died or stalled mid-flight) is due again: a worker never calls WeCom
for a row past its lease (bot.messaging.heartbeat), so taking it back cannot run one call twice at
once; but the call may have reached WeCom, so an outbox row taken back this way is `uncertain`.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import and_, case, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from bot.clock import Clock
from bot.db.engine import reads_of
from bot.messaging.heartbeat import LeaseBook, lease_end

# pending: never tried, or tried and not done; unknown: tried, and WeCom may have done it (outbox)
WAITING = ("pending", "unknown")


def _due(model, now: datetime):
    return or_(and_(model.status.in_(WAITING), model.next_attempt_at <= now),
               and_(model.status == "running", model.lease_until < now))


def anything_due(session: Session, model, now: datetime) -> bool:
    """A cheap read before a claim: an idle worker must not take SQLite's write lock to find nothing."""
    return session.execute(select(model.id).where(_due(model, now)).limit(1)).first() is not None


def claim_due(session: Session, model, *, now: datetime, owner: str, limit: int, lease: timedelta) -> list:
    due = _due(model, now)
    pick = select(model.id).where(due).order_by(model.priority, model.next_attempt_at, model.id).limit(limit)
    if session.get_bind().dialect.name == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    values = dict(status="running", claimed_by=owner, lease_until=lease_end(model, now, lease.total_seconds()),
                  attempts=model.attempts + 1)
    if hasattr(model, "uncertain"):
        values["uncertain"] = case((model.status.in_(("running", "unknown")), True), else_=model.uncertain)
    stmt = (update(model).where(model.id.in_(pick.scalar_subquery()))
            .values(**values)
            .returning(model)
            .execution_options(synchronize_session=False))
    # RETURNING gives no order: put the batch back in claim order (a clerk's replies in turn).
    return sorted(session.scalars(stmt), key=lambda r: (r.priority, r.next_attempt_at, r.id))


class SharedLook:
    """The "anything due?" read, shared by the loops of one table in a process. A doorbell wakes
    every worker thread at once (four outbox threads for each stored event), and each read its own
    nothing: under a callback load, idle outbox threads held a third of the worker process's GIL.

    A caller gets the answer of a read that *began after it asked* (never an older one, which might
    predate the row it was woken for): its own, or one that a caller arriving at the same moment
    starts for all who are waiting. So a wave of N threads costs one or two reads, not N."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._begun = 0         # reads started, numbered 1, 2, ...
        self._finished = 0      # the number of the latest read finished
        self._running = False
        self._answer = False

    def due(self, look: Callable[[], bool]) -> bool:
        with self._cond:
            need = self._begun + 1          # the first read to begin after this call
            while self._finished < need:
                if not self._running:       # nobody is reading for us: read for everyone waiting
                    self._running = True
                    self._begun += 1
                    mine = self._begun
                    break
                self._cond.wait()
            else:
                return self._answer
        try:
            answer = look()
        except BaseException:
            with self._cond:                # the waiters read again themselves
                self._running = False
                self._cond.notify_all()
            raise
        with self._cond:
            self._running = False
            self._finished, self._answer = mine, answer
            self._cond.notify_all()
        return answer


_looks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # engine -> {(model, clock id): SharedLook}
_looks_lock = threading.Lock()


def shared_look(engine, model, clock: Clock) -> SharedLook:
    """One per table, engine and clock: loops on another clock (tests, demo) ask their own "now"."""
    with _looks_lock:
        return _looks.setdefault(engine, {}).setdefault((model, id(clock)), SharedLook())


class ClaimLoop:
    """The shape both pipelines share: look (a read), claim a batch of due rows of `model` under a
    lease (a write), process them. The event dispatcher and the outbox worker differ only in
    `process`."""

    model: type

    def __init__(self, sessions: sessionmaker[Session], clock: Clock, *, owner: str, lease_seconds: float, batch: int,
                 book: LeaseBook | None = None):
        self.sessions = sessions
        self.clock = clock
        self.owner = owner
        self.lease = timedelta(seconds=lease_seconds)
        self.batch = batch
        self.reads = reads_of(sessions)
        self.book = book or LeaseBook()   # the process's, renewed by its heartbeat; else this loop's own
        self._look = shared_look(sessions.kw["bind"], self.model, clock)

    def _anything_due(self) -> bool:
        with self.reads() as r:
            return anything_due(r, self.model, self.clock.now())

    def run_once(self) -> int:
        """Claim and process one batch; the number of rows."""
        if not self._look.due(self._anything_due):
            return 0
        with self.sessions.begin() as s:
            rows = claim_due(s, self.model, now=self.clock.now(), owner=self.owner, limit=self.batch,
                             lease=self.lease)
        self.book.hold(self.model, self.owner, rows)
        try:
            self.process(rows)
        finally:
            self.book.release(self.model, [r.id for r in rows])
        return len(rows)

    def lease_left(self, row) -> float:
        """Seconds this loop still holds `row` for, as last confirmed (0 once another worker took it)."""
        until = self.book.until(self.model, row.id)
        return (until - self.clock.now()).total_seconds() if until else 0.0

    def process(self, rows: list) -> None:
        raise NotImplementedError
