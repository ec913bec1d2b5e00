"""今日 today, 暂停 pause, 恢复 resume: a clerk's view of and say over today's broadcasts."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import select

from bot.broadcast.dispatch import Broadcaster
from bot.calendar.calendar import KIND_ZH
from bot.commands.router import Clerk, CommandRouter, Reply
from bot.db.models import BroadcastPause, SlotDelivery
from bot.text import fit_lines
from bot.messaging.uow import UnitOfWork

router = CommandRouter()

STATUS_ZH = {"planned": "待推送", "queued": "发送中", "awaiting": "待你确认", "sent": "已发", "failed": "失败",
             "cancelled": "已取消", "reminded": "已提醒待发", "paused": "已暂停", "skipped": "无内容"}


@router.command("今日", "today", summary="我的群今天各时段的推送：群发还是提醒、确认了没有")
def today(clerk: Clerk, uow: UnitOfWork, now: datetime, tz: ZoneInfo, broadcaster: Broadcaster) -> Reply:
    day = now.astimezone(tz).date()
    s = uow.session
    rows = list(s.scalars(select(SlotDelivery).where(SlotDelivery.day == day.isoformat(),
                                                     SlotDelivery.owner == clerk.userid)))
    paused = s.get(BroadcastPause, (day.isoformat(), clerk.userid)) is not None
    head = f"今日推送（{day:%m-%d}）" + ("：已暂停，发「恢复」可继续" if paused else "")
    lines = []
    # Per store when the clerk serves several: each store's groups get that store's content.
    several = len(clerk.stores) > 1
    for st in clerk.stores:
        if several:
            lines.append(f"【{st.name}】")
        by_slot: dict[str, list[SlotDelivery]] = defaultdict(list)
        for r in rows:
            if r.store_code == st.code:
                by_slot[r.slot].append(r)
        for slot in broadcaster.settings.slots:
            lines.append(_slot_line(slot, by_slot.get(slot), broadcaster.calendar.day(st.code, day).get(slot)))
    if any(r.mode == "mass" and r.status == "awaiting" for r in rows):
        lines.append("有群发等你确认：企业微信 → 工作台 → 客户群发，点「发送」。")
    return Reply(fit_lines(head, lines, ""))


def _slot_line(slot: str, group: list[SlotDelivery] | None, entry) -> str:
    if not group:
        return f"{slot} {entry.kind_zh if entry else '无内容'}：" + ("还没到时间" if entry else "不推送")
    kind = KIND_ZH.get(group[0].kind or "", entry.kind_zh if entry else "")
    parts = []
    for mode, label in (("mass", "群发"), ("reminder", "提醒")):
        mine = [r for r in group if r.mode == mode]
        if not mine:
            continue
        counts = Counter(STATUS_ZH.get(r.status, r.status) for r in mine)
        parts.append(f"{label}{len(mine)}个群（" + "，".join(f"{k}{v}" for k, v in counts.items()) + "）")
    return f"{slot} {kind}：" + "；".join(parts)


@router.command("暂停", "pause", summary="我的群今天剩下的时段不再推送")
def pause(clerk: Clerk, uow: UnitOfWork, now: datetime, tz: ZoneInfo, broadcaster: Broadcaster) -> Reply:
    day = now.astimezone(tz).date()
    held = broadcaster.pause(uow.session, clerk.userid, day)
    return Reply(f"好的，今天（{day:%m-%d}）你的群剩下的时段都不再推送"
                 + (f"（{held} 个群次）" if held else "") + "。发「恢复」可以恢复。已经发出的群发不受影响。")


@router.command("恢复", "resume", summary="恢复我的群今天剩下时段的推送")
def resume(clerk: Clerk, uow: UnitOfWork, now: datetime, tz: ZoneInfo, broadcaster: Broadcaster) -> Reply:
    day = now.astimezone(tz).date()
    if not broadcaster.resume(uow.session, clerk.userid, day):
        return Reply("今天没有暂停过，推送照常进行。")
    return Reply("已恢复：从下一个时段开始照常推送（暂停期间错过的时段不补发）。")
