"""Retention: what is older than `retention_days` goes (the daily job in bot.scheduler).

Purged: handled events, settled outbox rows (done / expired / dead: never pending, running or one
whose outcome is still being reconciled), slot deliveries, and the members' names and phone tails
of chains closed that long ago. Kept: what counts and reports are made of (funnel facts, welcomes,
QR findings, chains with their totals and their orders' quantities), so `wecom-bot report` for an
old day still shows its funnel, welcomes, chains and findings; its per-slot delivery lines go
with the slot_delivery rows. The console's audit log (admin_action: who fired, paused or closed
what; ops staff, no customer data, a few rows a day) is kept, as an audit log should be.

Each statement touches at most BATCH rows in its own transaction, so SQLite's write lock is never
held for long and callbacks keep being stored while a year of rows goes.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import ColumnElement, delete, func, or_, select, tuple_, update
from sqlalchemy.orm import Session, sessionmaker

from bot.clock import Clock
from bot.db.models import Chain, ChainBuyer, ChainOrder, Event, Outbox, SlotDelivery

log = logging.getLogger(__name__)

BATCH = 5000
EVENT_DONE = ("done", "failed", "dead")        # handled, or given up on; pending and running stay
OUTBOX_SETTLED = ("done", "expired", "dead")   # an allowlist: any other status (unknown, …) stays
BLANK = ""                                     # what a purged name or phone tail becomes


def purge(sessions: sessionmaker[Session], clock: Clock, days: int) -> dict[str, int]:
    """Rows older than `days`, in batches. Returns how many rows each step deleted or blanked."""
    now = clock.now()
    cutoff = now - timedelta(days=days)
    cutoff_day = (now.date() - timedelta(days=days)).isoformat()   # slot_delivery.day, local dates
    counts = {
        "event": _delete(sessions, Event, Event.status.in_(EVENT_DONE), Event.received_at < cutoff),
        "outbox": _delete(sessions, Outbox, Outbox.status.in_(OUTBOX_SETTLED),
                          func.coalesce(Outbox.done_at, Outbox.created_at) < cutoff),
        "slot_delivery": _delete(sessions, SlotDelivery, SlotDelivery.day < cutoff_day),
    }
    old_chains = select(Chain.id).where(Chain.status == "closed", Chain.closed_at < cutoff)
    counts["chain_order"] = _blank_orders(sessions, old_chains)
    # name|phone_tail is the key of the per-person limit, needed only while a chain is open
    counts["chain_buyer"] = _delete(sessions, ChainBuyer, ChainBuyer.chain_id.in_(old_chains))
    log.info("retention %d days: %s", days, counts)
    return counts


def _delete(sessions: sessionmaker[Session], model, *where: ColumnElement[bool]) -> int:
    cols = list(model.__table__.primary_key.columns)
    key = cols[0] if len(cols) == 1 else tuple_(*cols)
    total = 0
    while True:
        with sessions.begin() as s:
            # the conditions are checked again by the DELETE itself: a row retried meanwhile stays
            batch = select(*cols).where(*where).limit(BATCH)
            n = s.execute(delete(model).where(key.in_(batch), *where)).rowcount
        total += n
        if n < BATCH:
            return total


def _blank_orders(sessions: sessionmaker[Session], chain_ids) -> int:
    personal = or_(ChainOrder.name != BLANK, ChainOrder.phone_tail != BLANK, ChainOrder.buyer_key != BLANK)
    total = 0
    while True:
        with sessions.begin() as s:
            batch = select(ChainOrder.id).where(ChainOrder.chain_id.in_(chain_ids), personal).limit(BATCH)
            n = s.execute(update(ChainOrder).where(ChainOrder.id.in_(batch))
                          .values(name=BLANK, phone_tail=BLANK, buyer_key=BLANK)).rowcount
        total += n
        if n < BATCH:
            return total
