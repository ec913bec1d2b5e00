"""What customers tell from the group-QR page (/q/): they viewed it, or they could not join.

Both are funnel facts of the customer's add (one token per add): `viewed` once per add, and a report
once per add, its reason in the kind (`report:error` 系统错误/二维码失效, `report:full` 群已满,
`report:other`). Reports raise the alarm sooner than silence alone can:
`qr_health.reports_to_alert` distinct customers of a store who reported since its last QR join
(inside the window), with `report_min_adds` adds since that join, open a `reported` finding at once.
A join between two reports says the QR worked then: a healthy store's stray reports are rarely two
with no join between them, and rarer still in a long gap. One report with the stalled rule at the
relaxed `report_alpha` (looked at once, on the report; from `report_min_adds` adds) opens it too.
scripts/bench_qr_health.py measures both against the silence rule alone. A join through the store's QR clears it like a stalled finding
(QrHealth.on_joins).

Every counted report also tells the clerk the customer added: whatever the QR's state, that clerk
can pull the customer into the group from their chat, so the customer who spoke up is not lost.
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
from bot.config import QrHealthSettings
from bot.funnel.alerts import REASON_ZH
from bot.funnel.findings import QrHealth, evaluate_stalled
from bot.messaging.outbox import OutboxRepo
from bot.text import app_text

REASONS = ("error", "full", "other")


def relaxed_rule(cfg: QrHealthSettings) -> QrHealthSettings:
    """The stalled rule as one report reads it (the benchmark uses the same)."""
    return cfg.model_copy(update={"alpha": cfg.report_alpha, "min_adds": cfg.report_min_adds})


def help_the_reporter(s: Session, clock: Clock, add: PageAdd, reason: str, tz) -> None:
    """The clerk the customer added hears of it at once and can invite them into the group by hand."""
    when = add.added_at.astimezone(tz)
    day = "今天" if when.date() == clock.now().astimezone(tz).date() else f"{when:%m-%d}"
    text = (f"【顾客进不了群】{day} {when:%H:%M} 加您好友的顾客（尾号{add.external_userid[-4:]}）"
            f"在进群页面反馈：{REASON_ZH.get(reason, REASON_ZH['other'])}。\n"
            "请在企业微信里打开门店群的「群聊信息」，点「+」直接把TA拉进群，不用等TA再扫码。")
    OutboxRepo(s, clock).add("app_message", f"qr_report:{add.event_id}", app_text(add.userid, text))


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


def record_report(s: Session, health: QrHealth, clock: Clock, add: PageAdd, reason: str, now: datetime,
                  tz) -> bool:
    """A customer could not join. True when this report counted (the first for its add); the
    finding it opens, if any, alerts the store's clerks in this transaction."""
    reason = reason if reason in REASONS else "other"
    if not record_fact(s, key=f"report:{add.event_id}", kind=f"report:{reason}", store_code=add.store_code,
                       userid=add.userid, external_userid=add.external_userid, at=now):
        return False
    help_the_reporter(s, clock, add, reason, tz)
    cfg = health.cfg
    health.lock(s, add.store_code)   # a join or another report settled meanwhile is seen
    # reports before the last all-clear of this kind were heard already; before the last join, the QR worked
    cleared = s.scalar(select(func.max(QrFinding.resolved_at)).where(
        QrFinding.store_code == add.store_code, QrFinding.kind == "reported"))
    last_join = s.scalar(select(func.max(FunnelFact.at)).where(
        FunnelFact.kind == "join", FunnelFact.store_code == add.store_code))
    since = max(t for t in (now - timedelta(minutes=cfg.window_minutes), cleared, last_join) if t is not None)
    rows = s.execute(select(FunnelFact.kind, FunnelFact.external_userid).where(
        FunnelFact.kind.like("report:%"), FunnelFact.store_code == add.store_code, FunnelFact.at > since)).all()
    customers = {ext for _, ext in rows}
    reasons: dict[str, int] = {}
    for kind, _ in rows:
        reasons[kind.split(":", 1)[1]] = reasons.get(kind.split(":", 1)[1], 0) + 1
    # the silence since the last join, as one report reads it: enough adds for the reporters (two
    # healthy customers' stray reports seldom fall in one gap between joins, and that gap is seldom
    # report_min_adds long), or, for one report, that long and unlikely at report_alpha
    silence = evaluate_stalled(s, add.store_code, now, relaxed_rule(cfg), health.chain_rate(s, now),
                               looked_at_once=True)
    if not (silence.stalled or (len(customers) >= cfg.reports_to_alert and silence.adds >= cfg.report_min_adds)):
        return True
    # since the reporters' first add, as the funnel dates adds: the recovery brings back everyone from then
    first_add = s.scalar(select(func.min(FunnelFact.at)).where(
        FunnelFact.kind == "add", FunnelFact.store_code == add.store_code, FunnelFact.external_userid.in_(customers),
        FunnelFact.at > now - timedelta(minutes=cfg.window_minutes)))
    # and from the first silent add before them: those customers were stranded too
    since = min(t for t in (silence.since, first_add, add.added_at) if t is not None)
    f = health.open(s, add.store_code, "reported", since,
                    {"reports": len(customers), "reasons": reasons}, seen_at=now)
    if f:
        alerts.notify(s, clock, [f])
    return True
