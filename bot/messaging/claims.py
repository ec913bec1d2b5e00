"""Atomic claims of due rows (events, outbox) by one worker among many processes.

One `UPDATE … WHERE id IN (SELECT … [FOR UPDATE SKIP LOCKED]) RETURNING`: on PostgreSQL SKIP LOCKED
lets workers pass each other; on SQLite the write lock (BEGIN IMMEDIATE) serialises claims. A row
whose lease ran out (its worker died mid-flight) is due again.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from bot.clock import Clock
from bot.db.engine import reads_of


def _due(model, now: datetime):
    return or_(and_(model.status == "pending", model.next_attempt_at <= now),
               and_(model.status == "running", model.lease_until < now))


def anything_due(session: Session, model, now: datetime) -> bool:
    """A cheap read before a claim: an idle worker must not take SQLite's write lock to find nothing."""
    return session.execute(select(model.id).where(_due(model, now)).limit(1)).first() is not None


def claim_due(session: Session, model, *, now: datetime, owner: str, limit: int, lease: timedelta) -> list:
    due = _due(model, now)
    pick = select(model.id).where(due).order_by(model.priority, model.next_attempt_at, model.id).limit(limit)
    if session.get_bind().dialect.name == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    stmt = (update(model).where(model.id.in_(pick.scalar_subquery()))
            .values(status="running", claimed_by=owner, lease_until=now + lease, attempts=model.attempts + 1)
            .returning(model)
            .execution_options(synchronize_session=False))
    # RETURNING gives no order: put the batch back in claim order (a clerk's replies in turn).
    return sorted(session.scalars(stmt), key=lambda r: (r.priority, r.next_attempt_at, r.id))


class ClaimLoop:
    """The shape both pipelines share: look (a read), claim a batch of due rows of `model` under a
    lease (a write), process them. The event dispatcher and the outbox worker differ only in
    `process`."""

    model: type

    def __init__(self, sessions: sessionmaker[Session], clock: Clock, *, owner: str, lease_seconds: int, batch: int):
        self.sessions = sessions
        self.clock = clock
        self.owner = owner
        self.lease = timedelta(seconds=lease_seconds)
        self.batch = batch
        self.reads = reads_of(sessions)

    def run_once(self) -> int:
        """Claim and process one batch; the number of rows."""
        with self.reads() as r:
            if not anything_due(r, self.model, self.clock.now()):
                return 0
        with self.sessions.begin() as s:
            rows = claim_due(s, self.model, now=self.clock.now(), owner=self.owner, limit=self.batch,
                             lease=self.lease)
        self.process(rows)
        return len(rows)

    def process(self, rows: list) -> None:
        raise NotImplementedError
