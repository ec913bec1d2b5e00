"""Per slot of a day: groups planned, mass vs reminder, confirmed/sent, failed with reasons."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date

from sqlalchemy import select
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


def slot_figures(s: Session, day: date, store_codes: list[str] | None = None) -> list[SlotFigures]:
    out: dict[str, SlotFigures] = {}
    q = select(SlotDelivery).where(SlotDelivery.day == day.isoformat())
    if store_codes is not None:   # a clerk's stores on /admin
        q = q.where(SlotDelivery.store_code.in_(store_codes))
    for r in s.scalars(q):
        f = out.setdefault(r.slot, SlotFigures(r.slot))
        f.groups += 1
        if r.status == "planned":
            f.not_fired += 1
        elif r.status in ("paused", "skipped"):
            f.paused += 1
        elif r.mode == "mass":
            f.mass += 1
            f.mass_sent += r.status == "sent"
            f.mass_awaiting += r.status in ("queued", "awaiting")
        else:
            f.reminder += 1
            f.reminded += r.status in ("reminded", "sent")
            f.opened += r.opened_at is not None
            f.tapped += r.tapped_at is not None
        if r.status in ("failed", "cancelled"):
            f.failed[r.reason or r.status] += 1
    return [out[k] for k in sorted(out)]


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
