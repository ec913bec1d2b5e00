"""The transactional outbox: every WeCom side effect is a row first, a call second.

A handler adds a row (idempotency key, deadline) in the same transaction as its state change; a
worker claims it, calls WeCom through the one client, and settles it by errcode: done, retry at a
time, unknown (sent, answer lost), expired (its deadline passed), or dead. The unique key makes a
re-run of a handler a no-op; the lease makes a crashed worker's row due again.

At most once at WeCom: each kind's Executor says whether its call is idempotent. A repeat of an
idempotent call is harmless at WeCom's side (welcome codes are single use and answer 41051;
message/send carries the duplicate check; reads, updates and cancels). A call that is not (a mass
message, a reminder) is never resent after its answer was lost, a lease ran out under it, or its
worker died: the row is `uncertain`, and its next attempt asks WeCom first (`reconcile`) and
sends only when WeCom has no trace of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from bot.clock import Clock
from bot.messaging.claims import ClaimLoop
from bot.db.models import Outbox
from bot.wecom import errcodes
from bot.wecom.client import WeComClient, WeComError

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8


@cache
def _insert_ignore_stmt(dialect: str, table):
    # RETURNING, not rowcount: psycopg reports no rowcount for this statement through SQLAlchemy.
    pk = next(iter(table.primary_key.columns))
    return (pg_insert if dialect == "postgresql" else sqlite_insert)(table).on_conflict_do_nothing().returning(pk)


def insert_ignore(session: Session, model, values: dict) -> bool:
    """INSERT … ON CONFLICT DO NOTHING; True when the row is new.

    One Core statement per table, built once, the row given as parameters: the ORM insert built anew with
    .values() for every row spent more Python than the round trip (a welcome's unit of work does three)."""
    stmt = _insert_ignore_stmt(session.get_bind().dialect.name, model.__table__)
    return session.execute(stmt, values).first() is not None


def insert_ignore_many(session: Session, model, rows: list[dict]) -> None:
    """INSERT … ON CONFLICT DO NOTHING of many rows (one executemany): those already there stay.

    Core, not the ORM's bulk insert, which spends Python per row on what the driver does in C."""
    if not rows:
        return
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    session.execute(insert(model.__table__).on_conflict_do_nothing(), rows)


class OutboxRepo:
    def __init__(self, session: Session, clock: Clock):
        self.session = session
        self.clock = clock

    def row(self, kind: str, key: str, payload: dict, *, deadline: datetime | None = None,
            not_before: datetime | None = None, priority: int = 1) -> dict:
        now = self.clock.now()
        return dict(key=key, kind=kind, payload=payload, status="pending", created_at=now, deadline=deadline,
                    next_attempt_at=not_before or now, attempts=0, priority=priority)

    def add(self, kind: str, key: str, payload: dict, **when) -> bool:
        """Queue a WeCom call once per key; False when the key was already queued."""
        return insert_ignore(self.session, Outbox, self.row(kind, key, payload, **when))

    def add_many(self, rows: list[dict]) -> None:
        """Queue many calls (dicts from `row`) in one statement, each once per key."""
        insert_ignore_many(self.session, Outbox, rows)


@dataclass
class Outcome:
    status: str                       # done | retry | unknown | expired | dead
    errcode: int = 0
    error: str | None = None
    result: dict = field(default_factory=dict)
    retry_in: float = 1.0
    maybe_done: bool = False          # an attempt's answer was lost: the row becomes uncertain


@dataclass
class Executor:
    """How one kind of outbox row is sent and settled.

    send(client, row) -> result dict, raising WeComError; decide(errcode, row, now) -> Outcome;
    settle(session, row, outcome, now) records the domain outcome in the same transaction.
    idempotent: sending twice does one thing at WeCom. When it is not, reconcile(client, row) runs
    before an uncertain row is sent again: the result WeCom already holds for it (settled as done),
    or None when WeCom has none and the row may be sent.
    """
    kind: str
    send: Callable[[WeComClient, Outbox], dict]
    decide: Callable[[WeComError, Outbox, datetime], Outcome] | None = None
    settle: Callable[[Session, Outbox, Outcome, datetime], None] | None = None
    idempotent: bool = True
    reconcile: Callable[[WeComClient, Outbox], dict | None] | None = None

    def __post_init__(self) -> None:
        if not self.idempotent and self.reconcile is None:
            raise ValueError(f"outbox kind {self.kind!r} is not idempotent and has no reconcile")


def default_decide(err: WeComError, row: Outbox, now: datetime) -> Outcome:
    if err.errcode == errcodes.PACED:
        return Outcome("retry", err.errcode, err.errmsg, retry_in=err.retry_after or 1.0)
    if err.errcode == errcodes.LEASE_LOST:   # a second, not at once: a heartbeat that cannot renew must not spin us
        return Outcome("retry", err.errcode, err.errmsg, retry_in=1.0)
    if err.errcode == errcodes.UNKNOWN_OUTCOME:
        return Outcome("unknown", err.errcode, err.errmsg, retry_in=min(300.0, 5.0 * 2 ** row.attempts))
    if err.errcode in errcodes.RETRYABLE:
        wait = 60.0 if err.errcode == errcodes.API_FREQ_LIMIT else min(300.0, 2.0 ** row.attempts)
        return Outcome("retry", err.errcode, err.errmsg, retry_in=wait)
    return Outcome("dead", err.errcode, err.errmsg)


class OutboxWorker(ClaimLoop):
    """Claims due rows and runs them. Several run as threads; several processes may run them too."""

    model = Outbox

    def __init__(self, sessions: sessionmaker[Session], client: WeComClient, clock: Clock,
                 executors: dict[str, Executor], *, owner: str, lease_seconds: float = 30,
                 batch: int = 8, on_settled: Callable[[Outbox, Outcome], None] | None = None, book=None):
        super().__init__(sessions, clock, owner=owner, lease_seconds=lease_seconds, batch=batch, book=book)
        self.client = client
        self.executors = executors
        self.on_settled = on_settled

    def process(self, rows: list[Outbox]) -> None:
        # Calls one by one, then one transaction settles the batch: on SQLite every transaction is
        # a turn of the one write lock, and a turn per row was most of a broadcast slot's time. A
        # crash before the settle leaves the rows running: taken back, they are uncertain (above).
        self._settle([(row, *self._run(row)) for row in rows])

    def _run(self, row: Outbox) -> tuple[Executor | None, Outcome]:
        ex = self.executors.get(row.kind)
        now = self.clock.now()
        if ex is None:
            outcome = Outcome("dead", error=f"no executor for kind {row.kind!r}")
        elif (row.deadline and now > row.deadline) or row.attempts > MAX_ATTEMPTS:
            # Too late to send. An uncertain row is asked about first: what WeCom did is recorded as
            # done, and only what it has no trace of counts as expired or dead.
            outcome = self._last_word(ex, row, now)
        else:
            try:
                with self.client.holding_lease(lambda need: self._covered(row, need)):
                    found = ex.reconcile(self.client, row) if row.uncertain and ex.reconcile else None
                    if found is not None:
                        log.info("outbox %s %s: WeCom already has it, not sent again", row.kind, row.key)
                        outcome = Outcome("done", result=found)
                    else:
                        outcome = Outcome("done", result=ex.send(self.client, row) or {})
            except WeComError as err:
                outcome = (ex.decide or default_decide)(err, row, self.clock.now())
                outcome.maybe_done = outcome.maybe_done or err.maybe_done
            except Exception as err:  # a bug in an executor: keep the row, say why, do not spin
                log.exception("outbox %s %s: executor failed", row.kind, row.key)
                outcome = Outcome("retry", errcodes.BAD_RESPONSE, f"{type(err).__name__}: {err}", retry_in=60)
        return ex, outcome

    def _last_word(self, ex: Executor, row: Outbox, now: datetime) -> Outcome:
        late = bool(row.deadline and now > row.deadline)
        gone = (Outcome("expired", error="deadline passed before sending") if late
                else Outcome("dead", errcode=row.last_errcode or 0, error="too many attempts"))
        if not (row.uncertain and ex.reconcile):
            return gone
        try:
            with self.client.holding_lease():   # a read: two workers asking at once do no harm
                found = ex.reconcile(self.client, row)
        except WeComError as err:
            return Outcome("dead", errcodes.UNKNOWN_OUTCOME,
                           f"outcome unknown: WeCom could not be asked ({err.errcode} {err.errmsg})")
        if found is not None:
            log.info("outbox %s %s: WeCom has it (found at the last word)", row.kind, row.key)
            return Outcome("done", result=found)
        gone.error = f"{gone.error}; WeCom has no trace of it"
        return gone

    def _covered(self, row: Outbox, need: float) -> bool:
        """May an attempt of `need` seconds start? When the lease covers it; or, for a row with a
        deadline, when the lease runs to the deadline: nobody may call for it after that, so an
        attempt that outlasts the lease cannot meet another worker's (a welcome claimed with 5 s of
        its 20 left still gets its try)."""
        left = self.lease_left(row)
        if row.deadline is not None:
            need = min(need, (row.deadline - self.clock.now()).total_seconds())
        return left > 0 and left >= need - 0.01

    def _settle(self, ran: list[tuple[Outbox, Executor | None, Outcome]]) -> None:
        if not ran:
            return
        now = self.clock.now()
        settled = []
        with self.sessions.begin() as s:
            for row, ex, outcome in ran:
                savepoint = s.begin_nested()  # one row's failure leaves the others settled
                try:
                    kept = self._settle_one(s, row, ex, outcome, now)
                except Exception:  # a bug in a settle: the row runs again when its lease ends
                    log.exception("outbox %s %s: settling failed", row.kind, row.key)
                    kept = False
                if kept:
                    savepoint.commit()
                    settled.append((row, outcome))
                else:
                    savepoint.rollback()  # the domain settle of a row whose lease was lost, too
        for row, outcome in settled:
            level = logging.INFO if outcome.status in ("done", "retry") else logging.WARNING
            log.log(level, "outbox %s %s -> %s %s", row.kind, row.key, outcome.status,
                    f"({outcome.errcode} {outcome.error})" if outcome.errcode or outcome.error else "")
            if self.on_settled:
                self.on_settled(row, outcome)

    def _settle_one(self, s: Session, row: Outbox, ex: Executor | None, outcome: Outcome, now: datetime) -> bool:
        """Settle one row inside the batch's transaction; False when its lease was lost to another worker."""
        if outcome.status in ("retry", "unknown"):
            at = now + timedelta(seconds=outcome.retry_in)
            if row.deadline and at > row.deadline:
                if outcome.status == "unknown" or row.uncertain:
                    # not expired unasked: its last attempt, at the deadline, asks WeCom (_last_word)
                    outcome.retry_in = max(0.0, (row.deadline - now).total_seconds()) + 1.0
                else:
                    outcome.status, outcome.error = "expired", outcome.error or "deadline passed while retrying"
        values: dict[str, Any] = dict(last_errcode=outcome.errcode or None, last_error=outcome.error,
                                      claimed_by=None, lease_until=None)
        if outcome.maybe_done:
            values["uncertain"] = True
        if outcome.status in ("retry", "unknown"):
            values.update(status="pending" if outcome.status == "retry" else "unknown",
                          next_attempt_at=now + timedelta(seconds=outcome.retry_in))
            if outcome.status == "unknown":
                values.update(uncertain=True)
            if outcome.errcode in (errcodes.PACED, errcodes.LEASE_LOST):  # never sent: not an attempt
                values.update(attempts=Outbox.attempts - 1, last_errcode=row.last_errcode)
        else:
            if ex and ex.settle:
                ex.settle(s, row, outcome, now)  # may shrink outcome.result before it is stored
            values.update(status=outcome.status, done_at=now, result=outcome.result or None)
        res = s.execute(update(Outbox).where(Outbox.id == row.id, Outbox.claimed_by == self.owner,
                                             Outbox.status == "running").values(**values)
                        .execution_options(synchronize_session=False))
        if res.rowcount != 1:
            log.warning("outbox %s: lease lost before settling (%s)", row.key, outcome.status)
            return False
        return True
