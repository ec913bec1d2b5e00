"""流失 churn: who left my stores' groups or deleted my stores' clerks, today and this week."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from bot.commands.router import Clerk, CommandRouter, Reply
from bot.funnel.churn import churned, week_start
from bot.messaging.uow import UnitOfWork
from bot.text import APP_TEXT_MAX_BYTES, fit_lines

router = CommandRouter()

FOOTER = "（顾客姓名只显示首字）"


@router.command("流失", "churn", summary="今天和本周离开我的门店的顾客（退群、删店员）")
def churn(clerk: Clerk, uow: UnitOfWork, now: datetime, tz: ZoneInfo) -> Reply:
    today = now.astimezone(tz).date()
    monday = week_start(today)
    week = churned(uow.session, monday, today, tz, clerk.store_codes)
    names = {st.code: st.name for st in clerk.stores}
    todays = [c for c in week if c.at.astimezone(tz).date() == today]
    lines = []
    for st in clerk.stores:
        t = [c for c in todays if c.store_code == st.code]
        w = [c for c in week if c.store_code == st.code]
        lines.append(f"{st.name}：今天退群{sum(c.kind == 'leave' for c in t)}、删店员{sum(c.kind != 'leave' for c in t)}；"
                     f"本周退群{sum(c.kind == 'leave' for c in w)}、删店员{sum(c.kind != 'leave' for c in w)}")
    lines.append("今天离开的：" if todays else "今天还没有顾客离开 ✅")
    lines += [c.line(tz, names) for c in reversed(todays)]
    earlier = [c for c in week if c.at.astimezone(tz).date() != today]
    if earlier:
        lines.append(f"本周早些时候（{monday:%m-%d}起）：")
        lines += [c.line(tz, names) for c in reversed(earlier)]
    head = f"流失（今天{today:%m-%d}，本周自{monday:%m-%d}周一起，截至{now.astimezone(tz):%H:%M}）"
    return Reply(fit_lines(head, lines, FOOTER, APP_TEXT_MAX_BYTES))
