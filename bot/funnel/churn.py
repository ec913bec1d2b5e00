"""Churn: the customers who left a store's groups (FunnelFact `leave`) or deleted its clerk
(`clerk_deleted`, WeCom's del_follow_user), with their names masked and where they came from — for
`流失 churn`, `wecom-bot report` and the morning digest. Counts per store and day are the funnel's
(bot.funnel.figures: `leaves`, `clerk_deleted`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.db.models import FunnelFact, GroupChat, GroupMember
from bot.text import mask_name

KINDS = ("leave", "clerk_deleted")


@dataclass
class Churned:
    kind: str                 # leave | clerk_deleted
    store_code: str
    external_userid: str
    at: datetime
    name: str | None          # from groupchat/get need_name; None when never read
    came_from: str            # the group they left and how they had joined, or the clerk QR they added

    def line(self, tz: ZoneInfo, store_names: dict[str, str]) -> str:
        who = mask_name(self.name) if self.name else "顾客" + self.external_userid[-4:]
        what = "退群" if self.kind == "leave" else "删除了店员"
        return f"· {self.at.astimezone(tz):%m-%d %H:%M} {who} {what}，{store_names.get(self.store_code, self.store_code)}：{self.came_from}"


def week_start(day: date) -> date:
    return day - timedelta(days=day.weekday())


def churned(s: Session, start: date, end: date, tz: ZoneInfo, stores: list[str] | None = None) -> list[Churned]:
    """Who left, days [start, end] in the local zone, oldest first."""
    since = datetime.combine(start, time(0), tz)
    until = datetime.combine(end + timedelta(days=1), time(0), tz)
    q = select(FunnelFact).where(FunnelFact.kind.in_(KINDS), FunnelFact.at >= since, FunnelFact.at < until,
                                 FunnelFact.store_code.is_not(None))
    if stores is not None:
        q = q.where(FunnelFact.store_code.in_(stores))
    facts = list(s.scalars(q.order_by(FunnelFact.at, FunnelFact.id)))
    if not facts:
        return []
    exts = {f.external_userid for f in facts}
    members: dict[tuple[str, str], GroupMember] = {}
    names: dict[str, str] = {}
    for m in s.scalars(select(GroupMember).where(GroupMember.userid.in_(exts))):
        members[(m.chat_id, m.userid)] = m
        if m.name:
            names.setdefault(m.userid, m.name)
    chats = {f.chat_id for f in facts if f.chat_id}
    group_names = dict(s.execute(select(GroupChat.chat_id, GroupChat.name).where(GroupChat.chat_id.in_(chats)))
                       .all()) if chats else {}
    out = []
    for f in facts:
        if f.kind == "leave":
            m = members.get((f.chat_id, f.external_userid))
            how = ("扫门店群码进的群" if m is not None and m.state == f.store_code else
                   "被邀请进的群" if m is not None and m.join_scene in (1, 2) else "进群方式不明")
            came_from = f"「{group_names.get(f.chat_id) or f.chat_id}」，{how}"
        else:
            came_from = f"扫门店店员码加的 {f.userid}"
        out.append(Churned(f.kind, f.store_code, f.external_userid, f.at, names.get(f.external_userid), came_from))
    return out
