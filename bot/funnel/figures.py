"""The funnel per store and hour, for a day or a range (`wecom-bot report`, `数据 stats`, the digest)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.db.models import FunnelFact



@dataclass
class StoreFunnel:
    store_code: str
    adds: int = 0
    viewed: int = 0              # adds whose customer opened the group-QR page (/q/)
    reports: int = 0             # customers who said there that they could not join
    converted: int = 0           # of those adds, joined a store group through the QR
    joins: int = 0               # QR joins attributed to the store
    joins_other: int = 0         # joins without state (invites, the owner's own QR)
    leaves: int = 0
    clerk_deleted: int = 0
    delays: list[int] = field(default_factory=list)
    hours: dict[int, dict[str, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))

    @property
    def conversion(self) -> float | None:
        return self.converted / self.adds if self.adds else None

    @property
    def median_delay_seconds(self) -> float | None:
        return statistics.median(self.delays) if self.delays else None


def funnel(s: Session, start: date, end: date, tz: ZoneInfo, stores: list[str] | None = None) -> dict[str, StoreFunnel]:
    """Days [start, end] in the local zone."""
    since = datetime.combine(start, time(0), tz)
    until = datetime.combine(end + timedelta(days=1), time(0), tz)
    q = select(FunnelFact).where(FunnelFact.at >= since, FunnelFact.at < until, FunnelFact.store_code.is_not(None))
    if stores is not None:
        q = q.where(FunnelFact.store_code.in_(stores))
    facts = list(s.scalars(q.order_by(FunnelFact.at)))
    out: dict[str, StoreFunnel] = {}
    joined_by: dict[tuple[str, str], FunnelFact] = {}
    for f in facts:
        if f.kind == "join":
            joined_by.setdefault((f.store_code, f.external_userid), f)
    for f in facts:
        sf = out.setdefault(f.store_code, StoreFunnel(f.store_code))
        hour = f.at.astimezone(tz).hour
        sf.hours[hour][f.kind] += 1
        if f.kind == "add":
            sf.adds += 1
            j = joined_by.get((f.store_code, f.external_userid))
            if j is not None and j.at >= f.at:
                sf.converted += 1
                sf.delays.append(max(0, int((j.at - f.at).total_seconds())))
        elif f.kind == "viewed":
            sf.viewed += 1
        elif f.kind.startswith("report:"):
            sf.reports += 1
        elif f.kind == "join":
            sf.joins += 1
        elif f.kind == "join_other":
            sf.joins_other += 1
        elif f.kind == "leave":
            sf.leaves += 1
        elif f.kind == "clerk_deleted":
            sf.clerk_deleted += 1
    return out


def fmt_delay(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f}秒" if seconds < 90 else f"{seconds / 60:.0f}分钟"


def fmt_rate(r: float | None) -> str:
    return "-" if r is None else f"{r:.0%}"
