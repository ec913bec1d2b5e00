"""数据 stats and 二维码 qr: a clerk's own stores only."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from bot.commands.router import Clerk, CommandRouter, Reply
from bot.funnel.alerts import KIND_ZH
from bot.funnel.findings import open_findings
from bot.funnel.figures import fmt_delay, fmt_rate, funnel
from bot.messaging.uow import UnitOfWork

router = CommandRouter()


@router.command("帮助", "help", summary="列出所有命令")
def help_(router: CommandRouter) -> Reply:
    return Reply(router.help_text())


@router.command("数据", "stats", summary="今天我的门店：扫码加好友、进群、进群率")
def stats(clerk: Clerk, uow: UnitOfWork, now: datetime, tz: ZoneInfo) -> Reply:
    today = now.astimezone(tz).date()
    figures = funnel(uow.session, today, today, tz, clerk.store_codes)
    lines = [f"今日数据（{today:%m-%d}，截至{now.astimezone(tz):%H:%M}）"]
    for st in clerk.stores:
        f = figures.get(st.code)
        if f is None:
            lines.append(f"{st.name}：今天还没有扫码数据")
            continue
        lines.append(f"{st.name}：加好友{f.adds}，打开进群页{f.viewed}，其中进群{f.converted}（{fmt_rate(f.conversion)}，"
                     f"中位用时{fmt_delay(f.median_delay_seconds)}）；扫码进群{f.joins}，其他方式进群{f.joins_other}，"
                     f"退群{f.leaves}，删店员{f.clerk_deleted}" + (f"；{f.reports}位顾客反馈进不了群" if f.reports else ""))
    return Reply("\n".join(lines))


@router.command("二维码", "qr", summary="我的门店二维码状态和未解决的问题")
def qr(clerk: Clerk, uow: UnitOfWork, tz: ZoneInfo) -> Reply:
    findings = open_findings(uow.session, clerk.store_codes)
    lines = ["门店二维码状态"]
    for st in clerk.stores:
        mine = [f for f in findings if f.store_code == st.code]
        qr_state = "已配置" if st.join_way_config_id and st.contact_way_config_id else "未配置（请运营执行 wecom-bot sync）"
        if not mine:
            lines.append(f"{st.name}：{qr_state}，正常 ✅")
        for f in mine:
            lines.append(f"{st.name}：⚠️ {KIND_ZH.get(f.kind, f.kind)}（自{f.since.astimezone(tz):%H:%M}起）")
    return Reply("\n".join(lines))
