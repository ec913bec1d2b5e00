"""Funnel facts from events: adds, joins (attributed by the member's `state` in groupchat/get),
leaves and clerk deletions. Joins need a groupchat/get, which can lag the callback: the read is an
outbox row (kind groupchat_get) retried until the new members show, then reconciled."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.db.models import FunnelFact, GroupChat, GroupMember, Store
from bot.events import ContactAdded, FollowUserDeleted, GroupChatChanged
from bot.messaging.inbox import StoredEvent
from bot.messaging.outbox import insert_ignore, insert_ignore_many
from bot.messaging.uow import UnitOfWork

READ_WINDOW = timedelta(minutes=15)


def record_fact(s: Session, *, key: str, kind: str, external_userid: str, at: datetime,
                store_code: str | None = None, chat_id: str | None = None, userid: str | None = None,
                join_delay_seconds: int | None = None) -> bool:
    return insert_ignore(s, FunnelFact, dict(key=key, kind=kind, store_code=store_code, chat_id=chat_id, userid=userid,
                                             external_userid=external_userid, at=at,
                                             join_delay_seconds=join_delay_seconds))


def last_add(s: Session, external_userid: str, *, store_code: str | None = None, userid: str | None = None,
             before: datetime | None = None) -> FunnelFact | None:
    q = select(FunnelFact).where(FunnelFact.kind == "add", FunnelFact.external_userid == external_userid)
    if store_code:
        q = q.where(FunnelFact.store_code == store_code)
    if userid:
        q = q.where(FunnelFact.userid == userid)
    if before:
        q = q.where(FunnelFact.at <= before)
    return s.scalars(q.order_by(FunnelFact.at.desc()).limit(1)).first()


def on_contact_added(evt: ContactAdded, uow: UnitOfWork, stored: StoredEvent) -> list:
    # Whole seconds, like WeCom's join_time: a join in the same second is not "before" its add.
    store = uow.stores.by_code(evt.state)
    record_fact(uow.session, key=f"add:{stored.id}", kind="add", store_code=store.code if store else None,
                userid=evt.userid, external_userid=evt.external_userid, at=stored.received_at.replace(microsecond=0))
    return []


def on_follow_user_deleted(evt: FollowUserDeleted, uow: UnitOfWork, stored: StoredEvent) -> list:
    add = last_add(uow.session, evt.external_userid, userid=evt.userid)
    record_fact(uow.session, key=f"clerk_deleted:{stored.id}", kind="clerk_deleted",
                store_code=add.store_code if add else None, userid=evt.userid,
                external_userid=evt.external_userid, at=stored.received_at)
    return []


def _groups():
    # bot.provisioning's package imports sync, which imports this module: import the rule late.
    from bot.provisioning import groups
    return groups


def on_group_chat_changed(evt: GroupChatChanged, uow: UnitOfWork, stored: StoredEvent) -> list:
    s = uow.session
    if evt.change_type == "update" and evt.update_detail == "del_member":
        group = s.get(GroupChat, evt.chat_id)
        for ext in evt.member_ids:
            member = s.get(GroupMember, (evt.chat_id, ext))
            if member is not None:
                member.present = False
            record_fact(s, key=f"leave:{stored.id}:{ext}", kind="leave", chat_id=evt.chat_id,
                        store_code=group.store_code if group else None, external_userid=ext, at=stored.received_at)
        if group is not None:
            group.member_count = max(0, group.member_count - len(evt.member_ids))
        return []
    if evt.change_type == "dismiss":
        _groups().dismiss_group(s, evt.chat_id, stored.received_at)
        return []
    if evt.change_type == "update" and evt.update_detail == "change_owner":
        # The callback names no owner: groupchat/get does (retried while it still shows the old one).
        group = s.get(GroupChat, evt.chat_id)
        uow.outbox.add("groupchat_get", f"groupchat_get:{evt.chat_id}:owner:{stored.id}",
                       {"chat_id": evt.chat_id, "member_ids": [], "old_owner": group.owner if group else None,
                        "event_id": stored.id}, deadline=stored.received_at + READ_WINDOW)
        return []
    if evt.change_type == "create" or (evt.change_type == "update" and evt.update_detail == "add_member"):
        uow.outbox.add("groupchat_get", f"groupchat_get:{evt.chat_id}:{evt.cur_mem_ver or stored.id}",
                       {"chat_id": evt.chat_id, "member_ids": list(evt.member_ids), "join_scene": evt.join_scene,
                        "expect_version": evt.cur_mem_ver, "event_id": stored.id},
                       deadline=stored.received_at + READ_WINDOW)
    return []


def apply_member_list(s: Session, group: dict, now: datetime, new_ids: set[str] = frozenset()) -> list[FunnelFact]:
    """Reconcile a group's stored members with groupchat/get and record a join fact for each new
    customer: those the callback named (`new_ids`) and, once the group has a baseline, any other
    newcomer (a missed callback). The first read of a group is its baseline: no facts for members
    who were there before. Returns the join facts recorded."""
    chat_id = group["chat_id"]
    row = s.get(GroupChat, chat_id)
    if row is None or (group.get("owner") and group["owner"] != row.owner):
        _groups().record_group(s, group, now)   # a new group, or a new owner: its store by the one rule
    # Two writers reconciling one group (a pass and a callback's groupchat/get) take turns on its row:
    # else both see a member as new and insert it twice. (SQLite's write lock already serialises them.)
    row = s.get(GroupChat, chat_id, with_for_update=True, populate_existing=True)
    if row.member_version and row.member_version == group.get("member_version"):
        # the members of the last read (WeCom bumps member_version on every change): only the time moves
        row.synced_at = now
        return []
    known = {m.userid: m for m in s.scalars(select(GroupMember).where(GroupMember.chat_id == chat_id))}
    states = {m["state"] for m in group.get("member_list", []) if m.get("state")}
    stores = {code for (code,) in s.execute(select(Store.code).where(Store.code.in_(states)))} if states else set()
    joins: list[FunnelFact] = []
    seen = set()
    fresh: list[dict] = []   # members new to this group: one INSERT for all (a sync's baseline is millions)
    for m in group.get("member_list", []):
        uid = m["userid"]
        seen.add(uid)
        cur = known.get(uid)
        is_new = cur is None or not cur.present
        values = dict(type=m.get("type", 2), join_scene=m.get("join_scene"), state=m.get("state"),
                      join_time=m.get("join_time"), present=True)
        if cur is None:
            fresh.append(dict(chat_id=chat_id, userid=uid, name=(m.get("name") or None) and m["name"][:64], **values))
        else:
            if m.get("name") and cur.name != m["name"][:64]:   # a read without need_name keeps the name
                cur.name = m["name"][:64]
            for k, v in values.items():
                if getattr(cur, k) != v:
                    setattr(cur, k, v)
        if not is_new or values["type"] != 2 or (uid not in new_ids and not known):
            continue
        at = datetime.fromtimestamp(m["join_time"], timezone.utc) if m.get("join_time") else now
        state = m.get("state")
        attributed = state in stores
        add = last_add(s, uid, store_code=state, before=at) if attributed else None
        fact = FunnelFact(key=f"join:{chat_id}:{uid}:{m.get('join_time')}", kind="join" if attributed else "join_other",
                          store_code=state if attributed else row.store_code or None, chat_id=chat_id,
                          external_userid=uid, at=at,
                          join_delay_seconds=max(0, int((at - add.at).total_seconds())) if add else None)
        if record_fact(s, key=fact.key, kind=fact.kind, store_code=fact.store_code, chat_id=chat_id,
                       external_userid=uid, at=at, join_delay_seconds=fact.join_delay_seconds):
            joins.append(fact)
    insert_ignore_many(s, GroupMember, fresh)
    for uid, m in known.items():
        if uid not in seen and m.present:
            m.present = False
    row.member_count = len(group.get("member_list", []))
    row.member_version = group.get("member_version")
    row.synced_at = now
    return joins
