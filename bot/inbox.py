"""Stored callbacks and the dispatcher that runs handlers from them.

The callback route only records (`record`); the dispatcher claims pending events, parses them
into domain events and runs the handlers in one unit of work that also marks the event done. A
handler that raises leaves its event retryable (with back-off), never silently dropped.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from bot import events as ev
from bot.clock import Clock
from bot.db.claim import claim_due
from bot.db.models import Event
from bot.outbox import insert_ignore
from bot.uow import UnitOfWork
from bot.wecom.callback import InboundCallback, parse_event

log = logging.getLogger(__name__)

MAX_EVENT_ATTEMPTS = 6
Handler = Callable[..., Any]


def record(sessions: sessionmaker[Session], cb: InboundCallback, now: datetime) -> bool:
    """Store a verified callback once. False when it was already stored (a redelivery)."""
    with sessions.begin() as s:
        return insert_ignore(s, Event, dict(delivery_key=cb.delivery_key, kind=cb.kind, payload=cb.xml,
                                            received_at=now, status="pending", attempts=0, next_attempt_at=now))


@dataclass(frozen=True)
class StoredEvent:
    """What a handler may know of the stored row behind its event."""
    id: int
    received_at: datetime


class EventDispatcher:
    def __init__(self, sessions: sessionmaker[Session], clock: Clock,
                 handlers: dict[type, list[Handler]], deps: dict[str, Any], *, owner: str,
                 lease_seconds: int = 30, batch: int = 16):
        self.sessions = sessions
        self.clock = clock
        self.handlers = handlers
        self.deps = deps
        self.owner = owner
        self.lease = timedelta(seconds=lease_seconds)
        self.batch = batch

    def run_once(self) -> int:
        with self.sessions.begin() as s:
            rows = claim_due(s, Event, now=self.clock.now(), owner=self.owner, limit=self.batch, lease=self.lease)
        for row in rows:
            self._handle(row)
        return len(rows)

    def _handle(self, row: Event) -> None:
        try:
            with UnitOfWork(self.sessions, self.clock) as uow:
                evt = parse_event(row.payload)
                stored = StoredEvent(row.id, row.received_at)
                for handler in self.handlers.get(type(evt), []):
                    for follow_up in self._call(handler, evt, uow, stored) or []:
                        log.info("event %s: %s", row.id, follow_up)
                done = uow.session.execute(
                    update(Event).where(Event.id == row.id, Event.claimed_by == self.owner, Event.status == "running")
                    .values(status="done", handled_at=self.clock.now(), claimed_by=None, lease_until=None))
                if done.rowcount != 1:
                    log.warning("event %s: lease lost; its handlers' work is rolled back", row.id)
                    return
                uow.commit()
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
        wanted = list(inspect.signature(handler).parameters)[1:]
        return handler(evt, **{name: available[name] for name in wanted})
