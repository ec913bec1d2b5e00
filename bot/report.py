"""`wecom-bot report`: the day's funnel per store, welcomes, broadcast delivery per slot, the day's
chains and the open QR findings, from the same figures the clerk commands use."""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from bot.broadcast.report import format_slots, slot_figures
from bot.db.engine import reads_of
from bot.db.models import Chain, ChainOrder, Store, Welcome
from bot.funnel.alerts import KIND_ZH
from bot.funnel.churn import churned, week_start
from bot.funnel.figures import StoreFunnel, fmt_delay, fmt_rate, funnel
from bot.funnel.findings import open_findings
from bot.provisioning.groups import unassigned
from bot.text import yuan


def print_findings(sessions: sessionmaker[Session], tz: ZoneInfo, out=print) -> None:
    with reads_of(sessions)() as s:
        findings = open_findings(s)
        names = dict(s.execute(select(Store.code, Store.name)).all())
    if not findings:
        out("QR findings: none open")
    for f in findings:
        out(f"QR finding  {f.store_code} {names.get(f.store_code, '')}: {f.kind} ({KIND_ZH.get(f.kind, '')}) "
            f"since {f.since.astimezone(tz):%m-%d %H:%M}  evidence {f.evidence}")


def print_report(sessions: sessionmaker[Session], tz: ZoneInfo, day: date, out=print) -> None:
    with reads_of(sessions)() as s:
        figures = funnel(s, day, day, tz)
        stores = list(s.scalars(select(Store).order_by(Store.code)))
        since = datetime.combine(day, time(0), tz)
        welcomes = list(s.scalars(select(Welcome).where(Welcome.event_at >= since,
                                                        Welcome.event_at < since + timedelta(days=1))))
    out(f"Funnel {day:%Y-%m-%d} ({tz.key})")
    out(f"{'store':<8} {'name':<12} {'adds':>5} {'viewed':>6} {'joined':>6} {'conv':>5} {'median':>7} {'QR joins':>8} "
        f"{'other':>5} {'leaves':>6} {'deleted':>7}")
    for st in stores:
        f = figures.get(st.code, StoreFunnel(st.code))
        out(f"{st.code:<8} {st.name[:10]:<12} {f.adds:>5} {f.viewed:>6} {f.converted:>6} {fmt_rate(f.conversion):>5} "
            f"{fmt_delay(f.median_delay_seconds):>7} {f.joins:>8} {f.joins_other:>5} {f.leaves:>6} {f.clerk_deleted:>7}"
            + (f"  (closed {st.closed_at.astimezone(tz):%Y-%m-%d})" if st.closed_at else ""))
        if f.hours:
            out("         by hour (adds/QR joins): " + "  ".join(
                f"{h:02d}h {f.hours[h].get('add', 0)}/{f.hours[h].get('join', 0)}" for h in sorted(f.hours)))
    with reads_of(sessions)() as s:
        gone = churned(s, week_start(day), day, tz)
    names = {st.code: st.name for st in stores}
    today = [c for c in gone if c.at.astimezone(tz).date() == day]
    out(f"Churn {day:%Y-%m-%d}: {sum(c.kind == 'leave' for c in today)} group leaves, "
        f"{sum(c.kind == 'clerk_deleted' for c in today)} clerk deletions; week from {week_start(day):%m-%d}: "
        f"{sum(c.kind == 'leave' for c in gone)} leaves, {sum(c.kind == 'clerk_deleted' for c in gone)} deletions")
    for c in today[:50]:
        out("  " + c.line(tz, names))
    with reads_of(sessions)() as s:
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
    print_findings(sessions, tz, out)
    with reads_of(sessions)() as s:
        orphans = unassigned(s)
    if orphans:
        out(f"Groups without a store: {len(orphans)} (no broadcasts until ops decide; see the ops message)")
        for g, why in orphans[:50]:
            out(f"  {g.chat_id} {g.name or ''} owner {g.owner}: {why}")
