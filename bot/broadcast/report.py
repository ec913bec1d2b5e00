"""Per slot of a day: groups planned, mass vs reminder, confirmed/sent, failed with reasons."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bot.db.models import SlotDelivery


@dataclass
class SlotFigures:
    slot: str
    groups: int = 0
    mass: int = 0
    reminder: int = 0
    mass_sent: int = 0
    mass_awaiting: int = 0
    reminded: int = 0
    opened: int = 0
    tapped: int = 0
    paused: int = 0
    not_fired: int = 0
    failed: Counter = field(default_factory=Counter)

    @property
    def delivered(self) -> int:
        return self.mass_sent + self.tapped

    def add(self, r, n: int = 1) -> None:
        """Count one slot_delivery row (or a row of its columns; `n` alike rows): the one rule `report` and
        /admin share."""
        self.groups += n
        if r.status == "planned":
            self.not_fired += n
        elif r.status in ("paused", "skipped"):
            self.paused += n
        elif r.mode == "mass":
            self.mass += n
            self.mass_sent += n * (r.status == "sent")
            self.mass_awaiting += n * (r.status in ("queued", "awaiting"))
        else:
            self.reminder += n
            self.reminded += n * (r.status in ("reminded", "sent"))
            self.opened += n * (r.opened_at is not None)
            self.tapped += n * (r.tapped_at is not None)
        if r.status in ("failed", "cancelled"):
            self.failed[r.reason or r.status] += n


# What SlotFigures.add reads of a row, and the row's slot and store: no whole rows loaded for a chain's day.
FIGURE_COLUMNS = (SlotDelivery.slot, SlotDelivery.store_code, SlotDelivery.mode, SlotDelivery.status,
                  SlotDelivery.reason, SlotDelivery.opened_at, SlotDelivery.tapped_at)


def slot_figures(s: Session, day: date, store_codes: list[str] | None = None) -> list[SlotFigures]:
    out: dict[str, SlotFigures] = {}
    # counted in the database: a chain's day is 100,000 rows (25,000 groups × 4 slots); alike rows come
    # back once, with how many (opened_at/tapped_at: one of them, or NULL, is all the rule reads)
    alike = (SlotDelivery.slot, SlotDelivery.mode, SlotDelivery.status, SlotDelivery.reason,
             SlotDelivery.opened_at.is_(None), SlotDelivery.tapped_at.is_(None))
    q = (select(SlotDelivery.slot, SlotDelivery.mode, SlotDelivery.status, SlotDelivery.reason,
                func.min(SlotDelivery.opened_at).label("opened_at"), func.min(SlotDelivery.tapped_at).label("tapped_at"),
                func.count().label("n"))
         .where(SlotDelivery.day == day.isoformat()).group_by(*alike))
    if store_codes is not None:   # a clerk's stores on /admin
        q = q.where(SlotDelivery.store_code.in_(store_codes))
    for r in s.execute(q):
        out.setdefault(r.slot, SlotFigures(r.slot)).add(r, r.n)
    return [out[k] for k in sorted(out)]


def store_slot_figures(s: Session, day: date, store_codes: list[str] | None = None
                       ) -> dict[tuple[str, str], SlotFigures]:
    """slot_figures per (slot, store): /admin/broadcasts' store rows, counted by the same rule."""
    out: dict[tuple[str, str], SlotFigures] = {}
    q = select(*FIGURE_COLUMNS).where(SlotDelivery.day == day.isoformat())
    if store_codes is not None:
        q = q.where(SlotDelivery.store_code.in_(store_codes))
    for r in s.execute(q):
        out.setdefault((r.slot, r.store_code), SlotFigures(r.slot)).add(r)
    return out


def format_slots(figures: list[SlotFigures]) -> list[str]:
    if not figures:
        return ["Broadcasts: no slot planned"]
    lines = [f"{'slot':<6} {'groups':>6} {'mass':>5} {'sent':>5} {'waiting':>7} {'remind':>6} {'opened':>6} "
             f"{'tapped':>6} {'paused':>6} {'unfired':>7} {'failed':>6}"]
    for f in figures:
        lines.append(f"{f.slot:<6} {f.groups:>6} {f.mass:>5} {f.mass_sent:>5} {f.mass_awaiting:>7} {f.reminder:>6} "
                     f"{f.opened:>6} {f.tapped:>6} {f.paused:>6} {f.not_fired:>7} {sum(f.failed.values()):>6}")
        for reason, n in f.failed.most_common():
            lines.append(f"       failed ×{n}: {reason}")
    return lines
