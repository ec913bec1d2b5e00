"""What /healthz answers: is this deployment doing its work? (DESIGN §3: 503 with the reason.)

Three checks, each read from the database so that any process (a `--role web` one included)
judges the whole deployment, not only itself:

- database: a `SELECT 1` answers.
- workers: work has been due for over STALE_SECONDS (an event or outbox row claimable since then)
  and no process has beaten in `worker_process` within STALE_SECONDS. Due work alone is a backlog
  (see /metrics), not a failure: a 503 for a burst would take web nodes out of the balancer. No
  work due, no failure: an idle deployment, or one whose workers are off on purpose, stays 200.
  A process that runs workers itself also fails when its own beat is that old.
- scheduler: expected once a scheduler has ever run against this database (the `scheduler_lease`
  row exists); then its heartbeat must be younger than STALE_SECONDS. That is the minute within
  which a standby takes over a dead holder (bot.scheduler: LEASE_SECONDS plus a tick), so a normal
  failover does not flap. A deployment that retires its scheduler deletes the row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from bot.clock import Clock
from bot.db.engine import reads_of
from bot.db.models import Event, Outbox, SchedulerLease, WorkerProcess
from bot.messaging.claims import WAITING, anything_due
from bot.messaging.heartbeat import workers_alive
from bot.scheduler import scheduler_status

STALE_SECONDS = 60.0   # "no worker has run for a minute", "another scheduler takes over within a minute"


@dataclass
class Health:
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.reasons

    def fail(self, check: str, reason: str) -> None:
        self.checks[check]["ok"] = False
        self.reasons.append(reason)

    def body(self) -> dict[str, Any]:
        return {"status": "ok" if self.ok else "fail", "checks": self.checks, "reasons": self.reasons}


def check_health(sessions: sessionmaker[Session], clock: Clock, *, own_process: str | None = None) -> Health:
    """`own_process`: this process's worker_process id when it runs workers (its heartbeat's id)."""
    h = Health()
    h.checks["database"] = {"ok": True}
    try:
        with reads_of(sessions)() as s:
            s.execute(text("SELECT 1"))
            _workers(h, s, clock, own_process)
        _scheduler(h, sessions, clock)
    except SQLAlchemyError as e:
        # The first query that fails says the database is gone; later checks cannot be judged.
        h.checks = {"database": h.checks["database"]}
        h.fail("database", f"database unreachable: {type(e).__name__}")
    return h


def _workers(h: Health, s: Session, clock: Clock, own_process: str | None) -> None:
    now = clock.now()
    within = timedelta(seconds=STALE_SECONDS)
    alive = workers_alive(s, now, within)
    stale_work = [m.__tablename__ for m in (Event, Outbox) if anything_due(s, m, now - within)]
    check = h.checks["workers"] = {"ok": True, "alive": len(alive), "due_over_a_minute": stale_work}
    if stale_work and not alive:
        waited = _oldest_due_seconds(s, now)
        h.fail("workers", f"{' and '.join(stale_work)} rows due for {waited:.0f}s and no worker process "
                          f"has beaten within {STALE_SECONDS:.0f}s")
    if own_process is not None:
        check["this_process"] = own_process in alive
        if own_process not in alive:
            beat = s.scalar(select(WorkerProcess.beat_at).where(WorkerProcess.id == own_process))
            age = f"{(now - beat).total_seconds():.0f}s ago" if beat else "never recorded"
            h.fail("workers", f"this process runs workers and its heartbeat is stale (last beat {age})")


def _oldest_due_seconds(s: Session, now) -> float:
    oldest = [s.scalar(select(func.min(m.next_attempt_at)).where(m.status.in_(WAITING), m.next_attempt_at <= now))
              for m in (Event, Outbox)]
    oldest = [t for t in oldest if t is not None]
    return (now - min(oldest)).total_seconds() if oldest else STALE_SECONDS


def _scheduler(h: Health, sessions: sessionmaker[Session], clock: Clock) -> None:
    with reads_of(sessions)() as s:
        expected = s.scalar(select(func.count()).select_from(SchedulerLease)) > 0
    check = h.checks["scheduler"] = {"ok": True, "expected": expected}
    if not expected:
        return
    status = scheduler_status(sessions, clock)
    check.update(holder=status.holder, heartbeat_age_seconds=status.age_seconds)
    if status.age_seconds is None:
        h.fail("scheduler", "a scheduler is expected (scheduler_lease exists) but none has ever beaten")
    elif status.age_seconds > STALE_SECONDS:
        h.fail("scheduler", f"scheduler heartbeat is stale: last beat {status.age_seconds:.0f}s ago "
                            f"(holder {status.holder or 'none'})")


# -- what gave up (`wecom-bot dead`) -------------------------------------------------------------
@dataclass
class GaveUp:
    table: str                 # event | outbox
    id: int
    kind: str
    key: str                   # the outbox idempotency key, the event's delivery key
    attempts: int
    errcode: int | None
    error: str | None
    at: Any                    # outbox: when it gave up; event: when it was received (no give-up time kept)
    uncertain: bool = False    # outbox: WeCom may have done it; a retry asks WeCom first

    def as_dict(self) -> dict[str, Any]:
        return {**vars(self), "at": self.at.isoformat() if self.at else None}


def gave_up(sessions: sessionmaker[Session], limit: int) -> tuple[list[GaveUp], list[GaveUp], int, int]:
    """Failed events and dead outbox rows, newest first, at most `limit` of each, and how many
    there are of each. Both reads run on the status prefix of ix_event_due / ix_outbox_due."""
    with reads_of(sessions)() as s:
        n_events = s.scalar(select(func.count()).select_from(Event).where(Event.status == "failed"))
        n_outbox = s.scalar(select(func.count()).select_from(Outbox).where(Outbox.status == "dead"))
        events = [GaveUp("event", e.id, e.kind, e.delivery_key, e.attempts, None, e.last_error, e.received_at)
                  for e in s.scalars(select(Event).where(Event.status == "failed")
                                     .order_by(Event.received_at.desc(), Event.id.desc()).limit(limit))]
        rows = [GaveUp("outbox", r.id, r.kind, r.key, r.attempts, r.last_errcode, r.last_error, r.done_at, r.uncertain)
                for r in s.scalars(select(Outbox).where(Outbox.status == "dead")
                                   .order_by(Outbox.done_at.desc(), Outbox.id.desc()).limit(limit))]
    return events, rows, n_events, n_outbox


class NotRetried(Exception):
    """The row is not there, or has not given up (the message says which)."""


def retry_outbox(sessions: sessionmaker[Session], clock: Clock, row_id: int) -> Outbox:
    """A dead outbox row due again now with its attempts reset. `uncertain` is kept: a row whose
    call may have reached WeCom is reconciled with WeCom before it is sent again. Conditional on
    `dead`, so a row a worker holds or settled meanwhile is never touched."""
    now = clock.now()
    with sessions.begin() as s:
        row = s.scalars(update(Outbox).where(Outbox.id == row_id, Outbox.status == "dead")
                        .values(status="pending", attempts=0, next_attempt_at=now, claimed_by=None,
                                lease_until=None, done_at=None)
                        .returning(Outbox).execution_options(synchronize_session=False)).first()
        if row is None:
            status = s.scalar(select(Outbox.status).where(Outbox.id == row_id))
            raise NotRetried(f"outbox {row_id}: no such row" if status is None else
                             f"outbox {row_id} is {status}, not dead: nothing retried")
    return row


def retry_event(sessions: sessionmaker[Session], clock: Clock, event_id: int) -> Event:
    """A failed event due again now with its attempts reset: its handlers run again from the stored
    payload (they are idempotent: an outbox row they queued before keeps its key)."""
    now = clock.now()
    with sessions.begin() as s:
        row = s.scalars(update(Event).where(Event.id == event_id, Event.status == "failed")
                        .values(status="pending", attempts=0, next_attempt_at=now, claimed_by=None,
                                lease_until=None)
                        .returning(Event).execution_options(synchronize_session=False)).first()
        if row is None:
            status = s.scalar(select(Event.status).where(Event.id == event_id))
            raise NotRetried(f"event {event_id}: no such event" if status is None else
                             f"event {event_id} is {status}, not failed: nothing retried")
    return row
