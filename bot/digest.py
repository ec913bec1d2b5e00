"""The morning digest (`digest.time`, default 09:30; `wecom-bot digest [--date D]`): one app message
per clerk about yesterday at their stores — adds, viewed, joined, conversion, QR findings, leaves and
clerk deletions, slots confirmed or missed, chain sales, and WeCom's own group statistics for the
groups they own (groupchat/statistic) — and, to `ops_userids`, the chain-wide one with the ten stores
of lowest conversion and every open finding.

Idempotent per (day, recipient): outbox key `digest:{day}:{userid}`; a recipient already queued is
skipped before anything is composed, so a second run makes no WeCom call either. WeCom's figures are
a read through the one client while composing; when it fails (or `day` is today, which WeCom does not
serve yet) the digest goes without them and says so.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.db.engine import reads_of
from bot.db.models import Chain, ChainOrder, GroupChat, Outbox, QrFinding, SlotDelivery, Store
from bot.funnel.alerts import KIND_ZH
from bot.funnel.figures import StoreFunnel, fmt_rate, funnel
from bot.funnel.findings import open_findings
from bot.messaging.outbox import OutboxRepo
from bot.text import APP_TEXT_MAX_BYTES, app_text, fit_lines, yuan
from bot.wecom.client import WeComError

log = logging.getLogger(__name__)

KIND = "app_message"
WEEKDAY_ZH = "一二三四五六日"
LOWEST = 10            # stores of lowest conversion in the ops digest
STAT_FIELDS = ("new_member_cnt", "member_has_msg", "msg_total", "chat_total", "member_total")
FOOTER = "（回复「数据」「二维码」「流失」看今天的详情）"
OPS_FOOTER = "（各店详情：/admin 或 wecom-bot report）"


def digest_key(day: date, userid: str) -> str:
    return f"digest:{day.isoformat()}:{userid}"


@dataclass
class DigestReport:
    day: date
    queued: list[str] = field(default_factory=list)     # recipients whose digest was queued now
    already: list[str] = field(default_factory=list)    # queued by an earlier run: nothing new
    wecom_stats: str = "ok"                              # ok | skipped | the error

    def summary(self) -> str:
        return (f"digest {self.day:%Y-%m-%d}: {len(self.queued)} queued, {len(self.already)} already sent earlier; "
                f"WeCom group statistics: {self.wecom_stats}")


@dataclass
class StoreDay:
    """What the digest says about one store's day, besides its funnel."""
    slots_confirmed: int = 0
    slots_missed: int = 0
    orders: int = 0
    qty: int = 0
    sales_cents: int = 0


def _store_days(s: Session, day: date, tz: ZoneInfo) -> dict[str, StoreDay]:
    out: dict[str, StoreDay] = defaultdict(StoreDay)
    for code, status in s.execute(select(SlotDelivery.store_code, SlotDelivery.status)
                                  .where(SlotDelivery.day == day.isoformat())):
        if status == "sent":               # the owner confirmed the mass message, or sent from the sidebar
            out[code].slots_confirmed += 1
        elif status not in ("paused", "skipped"):   # planned, never confirmed, failed, cancelled
            out[code].slots_missed += 1
    since = datetime.combine(day, time(0), tz)
    for code, qty, price in s.execute(
            select(ChainOrder.store_code, ChainOrder.qty, Chain.price_cents).join(Chain, Chain.id == ChainOrder.chain_id)
            .where(ChainOrder.status == "active", ChainOrder.created_at >= since,
                   ChainOrder.created_at < since + timedelta(days=1))):
        d = out[code]
        d.orders += 1
        d.qty += qty
        d.sales_cents += qty * price
    return out


def wecom_group_stats(client, day: date, tz: ZoneInfo, owners: list[str], today: date) -> tuple[dict[str, dict], str]:
    """WeCom's own figures for `day` per group owner, or ({}, why not)."""
    if not owners:
        return {}, "skipped (no group owners)"
    if day >= today:
        return {}, "skipped (WeCom serves up to yesterday only)"
    begin = int(datetime.combine(day, time(0), tz).timestamp())
    try:
        return client.external_contact_group_chat.statistic_by_owner(begin, begin, owners), "ok"
    except WeComError as e:
        log.warning("digest %s: WeCom group statistics not read (%s); sent without them", day, e)
        return {}, f"failed (errcode {e.errcode})"


def _funnel_line(name: str, f: StoreFunnel) -> str:
    return (f"{name}：加好友{f.adds}，打开进群页{f.viewed}，进群{f.converted}（{fmt_rate(f.conversion)}）；"
            f"退群{f.leaves}，删店员{f.clerk_deleted}")


def _day_line(d: StoreDay) -> str:
    return (f"  群发：确认{d.slots_confirmed}个，错过{d.slots_missed}个；团购：{d.orders}单{d.qty}份 ¥{yuan(d.sales_cents)}")


def _stats_line(label: str, data: dict | None, status: str) -> str:
    if status != "ok":
        why = "企微只提供到昨天的数据" if status.startswith("skipped (WeCom") else "企微暂时没有返回"
        return f"企微群统计（{label}）：{why}，这次早报不含这部分"
    data = data or {}
    return (f"企微群统计（{label}）：新增成员{data.get('new_member_cnt', 0)}，发言成员{data.get('member_has_msg', 0)}，"
            f"消息{data.get('msg_total', 0)}；群{data.get('chat_total', 0)}个，共{data.get('member_total', 0)}人")


def _finding_line(f: QrFinding, name: str, tz: ZoneInfo) -> str:
    return f"  ⚠️ {name}：{KIND_ZH.get(f.kind, f.kind)}（自{f.since.astimezone(tz):%m-%d %H:%M}起，未解决）"


def clerk_text(day: date, stores: list[Store], figures: dict[str, StoreFunnel], days: dict[str, StoreDay],
               findings: list[QrFinding], stats: dict | None, stats_status: str, tz: ZoneInfo) -> str:
    head = f"【早报】{day:%m-%d}（周{WEEKDAY_ZH[day.weekday()]}）我的门店"
    lines = []
    for st in stores:
        lines.append(_funnel_line(st.name, figures.get(st.code, StoreFunnel(st.code))))
        mine = [f for f in findings if f.store_code == st.code]
        lines += [_finding_line(f, "二维码", tz) for f in mine] or ["  二维码：正常 ✅"]
        lines.append(_day_line(days.get(st.code, StoreDay())))
    lines.append(_stats_line("我的群", stats, stats_status))
    return fit_lines(head, lines, FOOTER, APP_TEXT_MAX_BYTES)


def ops_text(day: date, stores: list[Store], figures: dict[str, StoreFunnel], days: dict[str, StoreDay],
             findings: list[QrFinding], stats: dict[str, dict], stats_status: str, tz: ZoneInfo) -> str:
    head = f"【早报·全部门店】{day:%m-%d}（周{WEEKDAY_ZH[day.weekday()]}），{len(stores)}家门店"
    total = StoreFunnel("*")
    for f in figures.values():
        for k in ("adds", "viewed", "converted", "leaves", "clerk_deleted"):
            setattr(total, k, getattr(total, k) + getattr(f, k))
    all_days = StoreDay()
    for d in days.values():
        for k in ("slots_confirmed", "slots_missed", "orders", "qty", "sales_cents"):
            setattr(all_days, k, getattr(all_days, k) + getattr(d, k))
    summed = {k: sum(int(v.get(k, 0)) for v in stats.values()) for k in STAT_FIELDS}
    lines = [_funnel_line("合计", total), _day_line(all_days).strip(), _stats_line("全部群主", summed, stats_status)]
    names = {st.code: st.name for st in stores}
    ranked = sorted((f for f in figures.values() if f.adds and f.store_code in names),
                    key=lambda f: (f.conversion, -f.adds, f.store_code))[:LOWEST]
    lines.append(f"进群率最低的{len(ranked)}家门店：" if ranked else "昨天没有门店有扫码加好友")
    lines += [f"  {f.store_code} {names[f.store_code]}：{fmt_rate(f.conversion)}（加好友{f.adds}，进群{f.converted}）"
              for f in ranked]
    lines.append(f"未解决的二维码问题：{len(findings)}个" if findings else "未解决的二维码问题：无 ✅")
    lines += [_finding_line(f, f"{f.store_code} {names.get(f.store_code, '')}", tz) for f in findings]
    return fit_lines(head, lines, OPS_FOOTER, APP_TEXT_MAX_BYTES)


def send_digest(c, day: date | None = None) -> DigestReport:
    """Queue the digest of `day` (default yesterday, local) to every clerk of an open store and to ops."""
    tz, now = c.settings.tz, c.clock.now()
    today = now.astimezone(tz).date()
    day = day or today - timedelta(days=1)
    report = DigestReport(day)
    ops = sorted({u for u in c.settings.ops_userids if u})
    with reads_of(c.sessions)() as s:
        stores = list(s.scalars(select(Store).where(Store.closed_at.is_(None)).order_by(Store.code)))
        by_clerk: dict[str, list[Store]] = defaultdict(list)
        for st in stores:
            for u in st.clerks or []:
                if u not in ops:       # ops get the chain-wide one, which covers their stores too
                    by_clerk[u].append(st)
        recipients = sorted(by_clerk) + ops
        done = set(s.scalars(select(Outbox.key).where(Outbox.key.in_([digest_key(day, u) for u in recipients]))))
        report.already = [u for u in recipients if digest_key(day, u) in done]
        todo = [u for u in recipients if digest_key(day, u) not in done]
        if not todo:
            report.wecom_stats = "skipped (nothing to send)"
            return report
        figures = funnel(s, day, day, tz)
        days = _store_days(s, day, tz)
        findings = open_findings(s)
        codes = [st.code for st in stores]
        owners = sorted(set(by_clerk) | {o for (o,) in s.execute(
            select(GroupChat.owner).where(GroupChat.store_code.in_(codes), GroupChat.dismissed_at.is_(None))
            .distinct())} if codes else set())
    stats, report.wecom_stats = wecom_group_stats(c.client, day, tz, owners, today)
    with c.sessions.begin() as s:
        outbox = OutboxRepo(s, c.clock)
        for u in todo:
            if u in ops:
                text = ops_text(day, stores, figures, days, findings, stats, report.wecom_stats, tz)
            else:
                mine = by_clerk[u]
                text = clerk_text(day, mine, figures, days, [f for f in findings if f.store_code in
                                                             {st.code for st in mine}],
                                  stats.get(u), report.wecom_stats, tz)
            if outbox.add(KIND, digest_key(day, u), app_text(u, text)):
                report.queued.append(u)
            else:                      # a concurrent run queued it first
                report.already.append(u)
    if report.queued:
        c.doorbell.ring()
    log.info("%s", report.summary())
    return report
