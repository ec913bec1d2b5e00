"""What customers tell from the group-QR page (/q/): they viewed it, or they could not join.

Both are funnel facts of the customer's add (one token per add): `viewed` once per add, and a report
once per add, its reason in the kind (`report:error` 系统错误/二维码失效, `report:full` 群已满,
`report:other`). Reports raise the alarm in minutes rather than waiting for silence to be
significant: `qr_health.reports_to_alert` distinct customers of a store inside the window open a
`reported` finding at once; one report with the stalled rule at the relaxed `report_alpha` does too.
A join through the store's QR clears it like a stalled finding (QrHealth.on_joins).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bot.clock import Clock
from bot.db.models import FunnelFact, QrFinding, Welcome
from bot.funnel import alerts
from bot.funnel.facts import record_fact
from bot.funnel.findings import QrHealth, evaluate_stalled

REASONS = ("error", "full", "other")


@dataclass(frozen=True)
class PageAdd:
    """The add a /q/ token was made for (its Welcome row)."""
    store_code: str
    event_id: int
    userid: str
    external_userid: str
    added_at: datetime


def page_add(s: Session, store_code: str, add_id: str) -> PageAdd | None:
    if not add_id.isdigit():
        return None
    w = s.scalar(select(Welcome).where(Welcome.event_id == int(add_id), Welcome.store_code == store_code))
    if w is None:
        return None
    return PageAdd(store_code, w.event_id, w.userid, w.external_userid, w.event_at)


def record_view(s: Session, add: PageAdd, now: datetime) -> bool:
    """The page was opened: the funnel's `viewed` step, once per add."""
    return record_fact(s, key=f"viewed:{add.event_id}", kind="viewed", store_code=add.store_code,
                       userid=add.userid, external_userid=add.external_userid, at=now)


def record_report(s: Session, health: QrHealth, clock: Clock, add: PageAdd, reason: str, now: datetime) -> bool:
    """A customer could not join. True when this report counted (the first for its add); the
    finding it opens, if any, alerts the store's clerks in this transaction."""
    reason = reason if reason in REASONS else "other"
    if not record_fact(s, key=f"report:{add.event_id}", kind=f"report:{reason}", store_code=add.store_code,
                       userid=add.userid, external_userid=add.external_userid, at=now):
        return False
    cfg = health.cfg
    since = now - timedelta(minutes=cfg.window_minutes)
    # reports before the last all-clear of this kind were heard already
    cleared = s.scalar(select(func.max(QrFinding.resolved_at)).where(
        QrFinding.store_code == add.store_code, QrFinding.kind == "reported"))
    rows = s.execute(select(FunnelFact.kind, FunnelFact.external_userid).where(
        FunnelFact.kind.like("report:%"), FunnelFact.store_code == add.store_code,
        FunnelFact.at > max(since, cleared) if cleared else FunnelFact.at > since)).all()
    customers = {ext for _, ext in rows}
    reasons: dict[str, int] = {}
    for kind, _ in rows:
        reasons[kind.split(":", 1)[1]] = reasons.get(kind.split(":", 1)[1], 0) + 1
    enough = len(customers) >= cfg.reports_to_alert
    if not enough:   # one report, and the silence already half significant: the relaxed stalled rule
        relaxed = cfg.model_copy(update={"alpha": cfg.report_alpha})
        enough = evaluate_stalled(s, add.store_code, now, relaxed, health.chain_rate(s, now)).stalled
    if not enough:
        return True
    # since the reporters' first add, as the funnel dates adds: the recovery brings back everyone from then
    first_add = s.scalar(select(func.min(FunnelFact.at)).where(
        FunnelFact.kind == "add", FunnelFact.store_code == add.store_code, FunnelFact.external_userid.in_(customers)))
    f = health.open(s, add.store_code, "reported", first_add or add.added_at,
                    {"reports": len(customers), "reasons": reasons}, seen_at=now)
    if f:
        alerts.notify(s, clock, [f])
    return True
