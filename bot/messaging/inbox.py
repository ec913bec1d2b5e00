"""Stored callbacks and the dispatcher that runs handlers from them.

The callback route only records (EventRecorder); the dispatcher claims pending events, parses them
into domain events and runs the handlers in one unit of work that also marks the event done. A
handler that raises leaves its event retryable (with back-off), never silently dropped.

The exception is an urgent event (priority 0: an add with a 20 s welcome window). It runs in two
units of work: its `urgent` handlers (the welcome), which commit with `urgent_done_at` and hand the
event back at priority 1, and, when it is claimed again, the rest (funnel, tags), which marks it
done. So a burst's welcomes are all queued, and sent, before any add's funnel and tag work, which
takes its turn by arrival with the other events; the events of the batch that arrived after a
handed-back add are handed back unrun too, so they still run after it. An urgent handler must be
idempotent: when the worker dies between the two commits, the event runs again whole. The urgent
work of a claimed batch commits as one transaction (row by row when it fails).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from bot import events as ev
from bot.clock import Clock
from bot.db.engine import urgent_of
from bot.db.models import Event
from bot.messaging.claims import ClaimLoop
from bot.messaging.group_commit import GroupCommitter
from bot.messaging.uow import UnitOfWork
from bot.wecom.callback import InboundCallback, parse_event

log = logging.getLogger(__name__)

MAX_EVENT_ATTEMPTS = 6
Handler = Callable[..., Any]


class EventRecorder(GroupCommitter):
    """Stores verified callbacks with group commit: one transaction for every callback waiting at
    that moment, so a burst costs one commit, not one per request. Each request is acknowledged
    only after its row is committed; a failed batch fails its requests (non-200: WeCom retries)."""

    name = "event-recorder"

    def __init__(self, sessions: sessionmaker[Session], clock: Clock, on_stored: Callable[[], None] = lambda: None,
                 max_batch: int = 256):
        super().__init__(max_batch)
        # WeCom is waiting for the answer: first in line for SQLite's write lock. A Core connection,
        # not an ORM session: the batch is one statement, and the ORM's bulk path (a new multi-VALUES
        # statement compiled for every batch size) was most of this thread's time under load.
        self.engine = urgent_of(sessions).kw["bind"]
        self.clock = clock
        self.on_stored = on_stored
        table = Event.__table__
        insert = pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
        # One statement, compiled once; executed with a list of rows it becomes SQLAlchemy's
        # "insertmanyvalues" (batched multi-row VALUES … RETURNING), whatever the batch's size.
        self._insert = insert(table).on_conflict_do_nothing().returning(table.c.delivery_key)
        # The recorder's own connection, kept between batches: a checkout from the pool pings the
        # server first (pool_pre_ping), a round trip that every acknowledgement waited for.
        self._conn: Connection | None = None

    async def record(self, cb: InboundCallback) -> bool:
        """True when stored now; False when it was stored before (a redelivery)."""
        return await self.submit(cb)

    def commit_batch(self, callbacks: list[InboundCallback]) -> list[bool]:
        try:
            created = self.store(callbacks)
        except Exception:
            log.exception("storing %d callbacks failed", len(callbacks))
            raise
        if any(created):
            self.on_stored()
        return created

    def store(self, callbacks: list[InboundCallback]) -> list[bool]:
        """One INSERT … ON CONFLICT DO NOTHING RETURNING for the batch; per callback, whether it is new."""
        now = self.clock.now()
        first: dict[str, InboundCallback] = {}
        for cb in callbacks:
            first.setdefault(cb.delivery_key, cb)
        rows = [dict(delivery_key=cb.delivery_key, kind=cb.kind, payload=cb.xml, received_at=now, status="pending",
                     attempts=0, next_attempt_at=now, priority=cb.priority) for cb in first.values()]
        stored = self._insert_rows(rows)
        out, seen = [], set()
        for cb in callbacks:
            out.append(cb.delivery_key in stored and cb.delivery_key not in seen)
            seen.add(cb.delivery_key)
        return out

    def _insert_rows(self, rows: list[dict]) -> set[str]:
        """The delivery keys inserted now. A connection found dead (the server restarted, a network cut)
        is replaced and the batch tried once more on a fresh one: the insert ignores rows already
        there, so a batch that did commit before its answer was lost is stored once."""
        for attempt in (1, 2):
            if self._conn is None or self._conn.closed or self._conn.invalidated:
                self._conn = self.engine.connect()
            try:
                with self._conn.begin():
                    return set(self._conn.execute(self._insert, rows).scalars())
            except DBAPIError as e:
                dead = e.connection_invalidated
                self._conn.close()
                self._conn = None
                if attempt == 2 or not dead:
                    raise
                # A first try that committed before the connection died makes its rows look redelivered now:
                # the dispatchers are rung either way (commit_batch rings only for rows new to this try).
                self.on_stored()
                log.warning("storing callbacks: the database connection was lost; trying once more on a new one")
        raise AssertionError("unreachable")

    def stop(self) -> None:
        super().stop()
        # Only once the writer thread is done with it (stop waits 5 s; a batch behind a lock may take longer).
        if self._conn is not None and (self._thread is None or not self._thread.is_alive()):
            self._conn.close()
            self._conn = None


@dataclass(frozen=True)
class StoredEvent:
    """What a handler may know of the stored row behind its event."""
    id: int
    received_at: datetime


class EventDispatcher(ClaimLoop):
    model = Event

    def __init__(self, sessions: sessionmaker[Session], clock: Clock,
                 handlers: dict[type, list[Handler]], deps: dict[str, Any], *, owner: str,
                 lease_seconds: float = 30, batch: int = 16, book=None,
                 on_urgent_done: Callable[[], None] = lambda: None):
        super().__init__(sessions, clock, owner=owner, lease_seconds=lease_seconds, batch=batch, book=book)
        self.handlers = handlers
        self.deps = deps
        # After the urgent work of a batch commits (adds' welcomes; a clerk's text, handled whole): its
        # outbox rows go now, not after the rest of the batch (up to 16 events) is handled.
        self.on_urgent_done = on_urgent_done
        # Each handler's arguments, resolved once: a misnamed dependency fails here, at start-up.
        self._wanted = {h: wanted_args(h, HANDLER_ARGS | set(deps), skip=1) for hs in handlers.values() for h in hs}

    def process(self, rows: list[Event]) -> None:
        split: list[tuple[Event, ev.DomainEvent, tuple[Handler, ...]]] = []   # urgent rows with urgent handlers
        rest: list[tuple[Event, tuple[Handler, ...]]] = []                    # (row, handlers done already)
        for row in rows:
            try:
                evt = parse_event(row.payload)
            except Exception:
                rest.append((row, ()))   # _handle records the failure
                continue
            handlers = self.handlers.get(type(evt), [])
            first = tuple(h for h in handlers if getattr(h, "urgent", False))
            if row.urgent_done_at is not None:   # the rest of an urgent event
                rest.append((row, first))
            elif row.priority == 0 and first and len(first) < len(handlers):
                split.append((row, evt, first))
            else:
                rest.append((row, ()))
        # The batch's urgent work in one transaction (one write lock, one commit); when any of it fails,
        # each row alone, and a row whose urgent handlers fail alone runs whole now.
        handed_back = self._handle_urgent(split) if split else set()
        if len(split) > 1 and not handed_back:
            for one in split:
                handed_back |= self._handle_urgent([one])
        if handed_back:
            # What arrived after a handed-back add waits for that add's rest: a deletion or a join of the same
            # customer reads the add's funnel fact. Handed back unrun, it is claimed again behind the rest.
            since = min(row.next_attempt_at for row, _, _ in split if row.id in handed_back)
            later = {row.id for row, skip in rest if row.urgent_done_at is None and row.next_attempt_at >= since}
            self._release(later)
            rest = [(row, skip) for row, skip in rest if row.id not in later]
        for row, skip in rest + [(row, ()) for row, _, _ in split if row.id not in handed_back]:
            self._handle(row, skip=skip)

    def _release(self, ids: set[int]) -> None:
        """Back to pending, unrun."""
        if ids:
            with self.sessions.begin() as s:
                s.execute(self._hand_back(ids))

    def _hand_back(self, ids, **values):
        """This loop's claimed rows back to pending in their place by arrival (next_attempt_at kept); the
        claim counted as no failed attempt."""
        return (update(Event).where(Event.id.in_(ids), Event.claimed_by == self.owner, Event.status == "running")
                .values(status="pending", claimed_by=None, lease_until=None, attempts=Event.attempts - 1, **values))

    def _handle_urgent(self, split: list[tuple[Event, ev.DomainEvent, tuple[Handler, ...]]]) -> set[int]:
        """The urgent handlers of these urgent events, committed with the events handed back for the rest
        (their ids); none when any of them failed or lost its lease (logged)."""
        ids = [row.id for row, _, _ in split]
        try:
            with UnitOfWork(self.sessions, self.clock) as uow:
                for row, evt, first in split:
                    stored = StoredEvent(row.id, row.received_at)
                    for handler in first:
                        for follow_up in self._call(handler, evt, uow, stored) or []:
                            log.info("event %s: %s", row.id, follow_up)
                # the rest queues with the other events
                back = uow.session.execute(self._hand_back(ids, priority=1, urgent_done_at=self.clock.now()))
                if back.rowcount != len(ids):
                    log.warning("events %s: a lease was lost; their urgent handlers' work is rolled back", ids)
                    return set()
                uow.commit()
        except Exception:
            log.exception("events %s: urgent handlers failed%s", ids,
                          "; each is tried alone" if len(ids) > 1 else "; the event runs whole")
            return set()
        self.on_urgent_done()
        return set(ids)

    def _handle(self, row: Event, skip: tuple[Handler, ...] = ()) -> None:
        try:
            with UnitOfWork(self.sessions, self.clock) as uow:
                evt = parse_event(row.payload)
                stored = StoredEvent(row.id, row.received_at)
                for handler in self.handlers.get(type(evt), []):
                    if handler in skip:
                        continue
                    for follow_up in self._call(handler, evt, uow, stored) or []:
                        log.info("event %s: %s", row.id, follow_up)
                done = uow.session.execute(
                    update(Event).where(Event.id == row.id, Event.claimed_by == self.owner, Event.status == "running")
                    .values(status="done", handled_at=self.clock.now(), claimed_by=None, lease_until=None))
                if done.rowcount != 1:
                    log.warning("event %s: lease lost; its handlers' work is rolled back", row.id)
                    return
                uow.commit()
            if row.priority == 0:
                self.on_urgent_done()
        except Exception as e:
            log.exception("event %s (%s): handler failed (attempt %d)", row.id, row.kind, row.attempts)
            failed = row.attempts >= MAX_EVENT_ATTEMPTS
            with self.sessions.begin() as s:
                s.execute(update(Event).where(Event.id == row.id, Event.claimed_by == self.owner).values(
                    status="failed" if failed else "pending", last_error=f"{type(e).__name__}: {e}"[:2000],
                    next_attempt_at=self.clock.now() + timedelta(seconds=min(600, 2 ** row.attempts)),
                    claimed_by=None, lease_until=None))

    def _call(self, handler: Handler, evt: ev.DomainEvent, uow: UnitOfWork, stored: StoredEvent):
        available = {"uow": uow, "clock": self.clock, "stored": stored, **self.deps}
        return handler(evt, **{name: available[name] for name in self._wanted[handler]})


def urgent(handler: Handler) -> Handler:
    """Marks a handler that races a clock: for an urgent event it commits before the event's other handlers."""
    handler.urgent = True
    return handler


HANDLER_ARGS = {"uow", "clock", "stored"}   # what the dispatcher itself hands every handler


class WiringError(TypeError):
    """A handler, executor or command names a dependency nobody provides."""


def wanted_args(fn: Callable, available: set[str], *, skip: int = 0) -> tuple[str, ...]:
    """The parameter names `fn` takes after its first `skip`, each checked against `available`."""
    names = tuple(inspect.signature(fn).parameters)[skip:]
    missing = [n for n in names if n not in available]
    if missing:
        raise WiringError(f"{fn.__module__}.{fn.__qualname__} wants {', '.join(missing)}; "
                          f"available: {', '.join(sorted(available))}")
    return names
