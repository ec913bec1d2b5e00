"""The funnel per store and hour, for a day or a range (`wecom-bot report`, `数据 stats`, the digest);
the same counts for several windows or per day in one query (`/admin`)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import and_, func, or_, select, true
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
        _count(sf, f.kind, 1)
        if f.kind == "add":
            j = joined_by.get((f.store_code, f.external_userid))
            if j is not None and j.at >= f.at:
                sf.converted += 1
                sf.delays.append(max(0, int((j.at - f.at).total_seconds())))
    return out


def funnels(s: Session, windows: list[tuple[date, date]], tz: ZoneInfo,
            stores: list[str] | None = None, *, converted: bool = True) -> list[dict[str, StoreFunnel]]:
    """`funnel()`'s counts (not hours, not delays) for several windows of days [start, end] in one
    query, counted in the database: the dashboard's 4,800 stores × 30 days are millions of facts, too
    many to load. Same rules: an add is converted when the customer's first QR join at the store inside
    the window comes at or after it. `converted=False`: the counts alone (`converted` stays 0)."""
    if not windows:
        return []
    bounds = [(datetime.combine(a, time(0), tz), datetime.combine(b + timedelta(days=1), time(0), tz))
              for a, b in windows]
    since, until = min(lo for lo, _ in bounds), max(hi for _, hi in bounds)

    def scope(t):
        return [t.c.at >= since, t.c.at < until, t.c.store_code.is_not(None),
                *([t.c.store_code.in_(stores)] if stores is not None else [])]

    F = FunnelFact.__table__
    # each customer's first QR join at the store, per window
    first = select(F.c.store_code, F.c.external_userid,
                   *[func.min(F.c.at).filter(F.c.at >= lo, F.c.at < hi).label(f"j{i}")
                     for i, (lo, hi) in enumerate(bounds)]
                   ).where(*scope(F), F.c.kind == "join").group_by(F.c.store_code, F.c.external_userid).subquery()
    f = F.alias("f")
    cols = []
    for i, (lo, hi) in enumerate(bounds):
        inside = and_(f.c.at >= lo, f.c.at < hi)
        cols += [func.count().filter(inside),
                 func.count().filter(inside, first.c[f"j{i}"] >= f.c.at) if converted else func.sum(0)]
    facts = (f.outerjoin(first, and_(f.c.kind == "add", first.c.store_code == f.c.store_code,
                                     first.c.external_userid == f.c.external_userid)) if converted else f)
    q = select(f.c.store_code, f.c.kind, *cols).select_from(facts).where(*scope(f)).group_by(f.c.store_code, f.c.kind)
    out: list[dict[str, StoreFunnel]] = [{} for _ in bounds]
    for code, kind, *counts in s.execute(q):
        for i in range(len(bounds)):
            n, conv = counts[2 * i], counts[2 * i + 1]
            if not n:
                continue
            sf = out[i].setdefault(code, StoreFunnel(code))
            _count(sf, kind, n)
            sf.converted += conv or 0
    return out


def converted_by(s: Session, starts: list[date], day: date, tz: ZoneInfo,
                 stores: list[str] | None = None) -> list[dict[str, int]]:
    """What `day`'s joins add to the converted adds of each window [start, day] beyond what the window
    [start, day - 1] counted: a customer whose first join in the window is on `day` (none in
    [start, day)) converts every add of theirs at the store from `start` up to that join. So a window is
    its closed days (`funnels`, kept) plus `day`'s counts plus this, and 30 days need not be re-read."""
    if not starts:
        return []
    lo = datetime.combine(day, time(0), tz)
    hi = datetime.combine(day + timedelta(days=1), time(0), tz)
    since = [datetime.combine(a, time(0), tz) for a in starts]
    earliest = min(since)
    F = FunnelFact.__table__
    scope = [F.c.store_code.in_(stores)] if stores is not None else [F.c.store_code.is_not(None)]
    first = (select(F.c.store_code, F.c.external_userid, func.min(F.c.at).label("at"))
             .where(F.c.kind == "join", F.c.at >= lo, F.c.at < hi, *scope)
             .group_by(F.c.store_code, F.c.external_userid).subquery("first"))
    # per customer: their adds and joins of the window, looked up by external_userid (a handful each). On
    # PostgreSQL a LATERAL join, else the planner hashes all 30 days of facts (3 s at 4,800 stores);
    # SQLite's nested loop uses the index as it is.
    h = F.alias("h")
    cols = [func.max(h.c.at).filter(h.c.kind == "join", h.c.at < lo).label("before"),
            *[func.count().filter(h.c.kind == "add", h.c.at >= since_i, h.c.at <= first.c.at).label(f"n{i}")
              for i, since_i in enumerate(since)]]
    mine = [h.c.external_userid == first.c.external_userid, h.c.store_code == first.c.store_code,
            h.c.kind.in_(("add", "join")), h.c.at >= earliest, h.c.at < hi]
    if s.get_bind().dialect.name == "postgresql":
        per = select(*cols).where(*mine).lateral("per")
        each = select(first.c.store_code, *per.c).select_from(first.join(per, true())).subquery("each")
    else:
        each = (select(first.c.store_code, *cols).select_from(first.join(h, and_(*mine)))
                .group_by(first.c.store_code, first.c.external_userid).subquery("each"))
    # summed per store in the database: ~20,000 customers join a day, 4,800 stores come back
    q = (select(each.c.store_code,
                *[func.sum(each.c[f"n{i}"]).filter(or_(each.c.before.is_(None), each.c.before < since_i))
                  for i, since_i in enumerate(since)])
         .group_by(each.c.store_code))
    out: list[dict[str, int]] = [{} for _ in starts]
    for code, *counts in s.execute(q):
        for i, n in enumerate(counts):
            if n:
                out[i][code] = int(n)       # PostgreSQL's sum of counts is a numeric
    return out


COUNTS = ("adds", "viewed", "reports", "joins", "joins_other", "leaves", "clerk_deleted")


def combined(closed: dict[str, StoreFunnel], day: dict[str, StoreFunnel], converted: dict[str, int]) -> dict[str, StoreFunnel]:
    """A window's figures from its closed days, its last day and `converted_by` (see there)."""
    out: dict[str, StoreFunnel] = {}
    for code in closed.keys() | day.keys() | converted.keys():
        sf = out[code] = StoreFunnel(code)
        for part in (closed.get(code), day.get(code)):
            if part is not None:   # spelt out: getattr/setattr per count was a quarter of /admin's time
                sf.adds += part.adds
                sf.viewed += part.viewed
                sf.reports += part.reports
                sf.joins += part.joins
                sf.joins_other += part.joins_other
                sf.leaves += part.leaves
                sf.clerk_deleted += part.clerk_deleted
        sf.converted = (closed[code].converted if code in closed else 0) + converted.get(code, 0)
    return out


def summed(*parts: dict[str, StoreFunnel]) -> StoreFunnel:
    """Every store's counts added up ("*"): what `combined`'s stores sum to, without building them."""
    total = StoreFunnel("*")
    for part in parts:
        for f in part.values():
            for k in (*COUNTS, "converted"):
                setattr(total, k, getattr(total, k) + getattr(f, k))
    return total


def _count(sf: StoreFunnel, kind: str, n: int) -> None:
    if kind == "add":
        sf.adds += n
    elif kind == "viewed":
        sf.viewed += n
    elif kind.startswith("report:"):
        sf.reports += n
    elif kind == "join":
        sf.joins += n
    elif kind == "join_other":
        sf.joins_other += n
    elif kind == "leave":
        sf.leaves += n
    elif kind == "clerk_deleted":
        sf.clerk_deleted += n


def fmt_delay(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f}秒" if seconds < 90 else f"{seconds / 60:.0f}分钟"


def fmt_rate(r: float | None) -> str:
    return "-" if r is None else f"{r:.0%}"
