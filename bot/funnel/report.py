"""The funnel per store and hour, for a day or a range (`wecom-bot report`, `数据 stats`)."""

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


def print_findings(c, out=print) -> None:
    from bot.db.engine import reads_of
    from bot.db.models import Store
    from bot.funnel.qr_health import KIND_ZH, open_findings

    with reads_of(c.sessions)() as s:
        findings = open_findings(s)
        names = dict(s.execute(select(Store.code, Store.name)).all())
    if not findings:
        out("QR findings: none open")
    for f in findings:
        out(f"QR finding  {f.store_code} {names.get(f.store_code, '')}: {f.kind} ({KIND_ZH.get(f.kind, '')}) "
            f"since {f.since.astimezone(c.settings.tz):%m-%d %H:%M}  evidence {f.evidence}")


def print_report(c, day: date, out=print) -> None:
    from bot.db.engine import reads_of
    from bot.db.models import Store, Welcome

    tz = c.settings.tz
    with reads_of(c.sessions)() as s:
        figures = funnel(s, day, day, tz)
        stores = list(s.scalars(select(Store).order_by(Store.code)))
        since = datetime.combine(day, time(0), tz)
        welcomes = list(s.scalars(select(Welcome).where(Welcome.event_at >= since,
                                                        Welcome.event_at < since + timedelta(days=1))))
    out(f"Funnel {day:%Y-%m-%d} ({c.settings.timezone})")
    out(f"{'store':<8} {'name':<12} {'adds':>5} {'joined':>6} {'conv':>5} {'median':>7} {'QR joins':>8} "
        f"{'other':>5} {'leaves':>6} {'deleted':>7}")
    for st in stores:
        f = figures.get(st.code, StoreFunnel(st.code))
        out(f"{st.code:<8} {st.name[:10]:<12} {f.adds:>5} {f.converted:>6} {fmt_rate(f.conversion):>5} "
            f"{fmt_delay(f.median_delay_seconds):>7} {f.joins:>8} {f.joins_other:>5} {f.leaves:>6} {f.clerk_deleted:>7}")
        if f.hours:
            out("         by hour (adds/QR joins): " + "  ".join(
                f"{h:02d}h {f.hours[h].get('add', 0)}/{f.hours[h].get('join', 0)}" for h in sorted(f.hours)))
    from bot.broadcast.report import format_slots, slot_figures
    from bot.chains.service import yuan
    from bot.db.models import Chain, ChainOrder

    with reads_of(c.sessions)() as s:
        slots = slot_figures(s, day)
        until = since + timedelta(days=1)
        chains = list(s.scalars(select(Chain).where(Chain.opens_at < until, Chain.deadline >= since)
                                .order_by(Chain.id)))
        orders = defaultdict(int)
        for chain_id, qty in s.execute(select(ChainOrder.chain_id, ChainOrder.qty).where(
                ChainOrder.chain_id.in_([ch.id for ch in chains]), ChainOrder.status == "active")):
            orders[chain_id] += 1
    out("Broadcasts (mass = add_msg_template, sent once the owner confirms; remind = owner reminder, "
        "tapped = sent from the sidebar)")
    for line in format_slots(slots):
        out(line)
    out(f"Group-buy chains running on {day:%Y-%m-%d}: {len(chains)}")
    for ch in chains:
        out(f"  #{ch.id} {ch.store_code} {ch.title} ¥{yuan(ch.price_cents)}: sold {ch.stock_total - ch.stock_left}/"
            f"{ch.stock_total} in {orders[ch.id]} orders, {ch.status}"
            + (f" ({ch.closed_reason} {ch.closed_at.astimezone(tz):%m-%d %H:%M})" if ch.closed_at else
               f", deadline {ch.deadline.astimezone(tz):%m-%d %H:%M}"))
    sent = [w for w in welcomes if w.status in ("sent", "already")]
    out(f"Welcomes: {len(sent)} sent ({sum(w.qr_attached for w in welcomes)} with the group QR), "
        f"{sum(w.status == 'expired' for w in welcomes)} expired, {sum(w.status == 'skipped' for w in welcomes)} skipped")
    print_findings(c, out)
