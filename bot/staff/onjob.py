"""On-job handovers (在职继承): a clerk removed from a store's `clerks` but still employed keeps
that store's customers and groups until ops confirm the move, because WeCom lets each customer and
group be transferred only twice in 90 days and the customer may refuse. `wecom-bot handover` prints
this plan; `--apply` queues it (bot.staff.handover.apply_plan)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from bot.config import Settings
from bot.db.engine import reads_of
from bot.db.models import FunnelFact, GroupChat, Store
from bot.staff import handover as ho
from bot.wecom import errcodes
from bot.wecom.api.staff import STATUS_LEFT
from bot.wecom.client import WeComClient, WeComError


def stores_to_hand_over(s: Session, settings: Settings, clerk: str) -> list[str]:
    """Stores where the clerk still owns groups or has customers but is no longer configured."""
    mine = {c for c in s.scalars(select(GroupChat.store_code).where(GroupChat.owner == clerk)) if c}
    mine |= {c for c in s.scalars(select(FunnelFact.store_code).where(FunnelFact.kind == "add",
                                                                      FunnelFact.userid == clerk).distinct()) if c}
    return sorted(st.code for st in settings.stores if st.code in mine and clerk not in st.clerks)


def plan_onjob(sessions: sessionmaker[Session], client: WeComClient, settings: Settings, clerk: str,
               store_code: str | None = None, to: str | None = None) -> list[ho.HandoverPlan]:
    reads = reads_of(sessions)
    problems: list[str] = []
    try:
        if int(client.staff.get(clerk).get("status") or 1) == STATUS_LEFT:
            problems.append(f"{clerk} 已退出企业：离职交接由机器人自动进行，不用在职转接")
    except WeComError as e:
        if e.errcode != errcodes.USER_NOT_FOUND:
            raise
        problems.append(f"{clerk} 在企业微信里已不存在：离职交接由机器人自动进行，不用在职转接")
    try:
        listed = set(client.staff.list(clerk)) if not problems else set()
    except WeComError as e:
        if e.errcode != errcodes.NO_CONTACT_RELATION:
            raise
        listed = set()
    with reads() as s:
        codes = [store_code] if store_code else stores_to_hand_over(s, settings, clerk)
        plans = []
        for code in codes:
            cfg = next((st for st in settings.stores if st.code == code), None)
            st = s.get(Store, code)
            issues = list(problems)
            if cfg is None or st is None:
                plans.append(ho.HandoverPlan(clerk, code, None, problems=issues + [f"门店 {code} 不在配置里（或还没 sync）"]))
                continue
            if clerk in cfg.clerks:
                issues.append(f"{clerk} 仍是 {code} 的店员：先把他从门店配置的 clerks 里去掉")
            serving = [c for c in (st.clerks or cfg.clerks) if c != clerk]
            if to is not None:
                successor = to if to in serving else None
                if successor is None:
                    issues.append(f"{to} 不是 {code} 的在职店员，不能接替")
            else:
                successor = ho.pick_successor(s, serving, cfg.successor, clerk)
                if successor is None:
                    issues.append(f"{code} 没有其他店员可以接替")
            busy = ho.onjob_in_flight(s, clerk, code)
            recorded = set(ho.recorded_customers(s, clerk, code))
            customers = sorted((recorded & listed) - busy)
            chats = sorted(set(ho.groups_of(s, clerk, code, codes)) - ho.onjob_groups_in_flight(s, clerk, code))
            plans.append(ho.HandoverPlan(clerk, code, successor, customers, chats,
                                         skipped=sorted((recorded & listed) & busy), problems=issues))
    return plans
