"""Who owns a customer group and which store it belongs to, decided one way for every path that
learns it (sync, groupchat/get after a callback, change_owner, a transfer to a successor), and what
follows when that changes or the group is dismissed.

The store rule depends on WeCom's facts and the config, not on which sync ran last. Among the stores
that list the group's owner as a clerk (open stores only):
  1. the store whose join way lists the group (the group QR it is behind);
  2. else the store it already belongs to (a full group swapped out of its join way stays put);
  3. else the owner's only store;
  4. else none: `ambiguous` (the owner serves several stores) or `no_store` (the owner is in no
     configured store). Such a group gets no broadcasts and is reported to ops, never guessed.
A new owner outside the group's store moves it to the owner's store, and the old store's join way
is repaired (the group QR must not lead into another store's group)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from bot.db.models import GroupChat, SlotDelivery, Store
from bot.messaging.outbox import OutboxRepo, insert_ignore
from bot.staff.ops import tell_ops

log = logging.getLogger(__name__)

REPAIR_KIND = "update_join_way"   # the outbox kind: the WeCom endpoint it calls
WHY_ZH = {"ambiguous": "群主同时是多个门店的店员，无法判断属于哪个门店",
          "no_store": "群主不在任何已配置门店的店员名单里"}


@dataclass(frozen=True)
class Decision:
    store_code: str | None
    why: str            # join_way | kept | only_store | ambiguous | no_store


@dataclass
class StoreIndex:
    """The open stores' clerks and join ways, read once: sync decides 25,000 groups from it."""
    clerk_stores: dict[str, list[str]] = field(default_factory=dict)   # userid -> store codes, sorted
    join_way_of: dict[str, str] = field(default_factory=dict)          # chat_id -> store whose join way lists it

    @classmethod
    def load(cls, s: Session) -> StoreIndex:
        idx = cls()
        rows = s.execute(select(Store.code, Store.clerks, Store.join_way_chat_ids)
                         .where(Store.closed_at.is_(None)).order_by(Store.code))
        for code, clerks, chats in rows:
            for u in clerks or []:
                idx.clerk_stores.setdefault(u, []).append(code)
            for c in chats or []:
                idx.join_way_of.setdefault(c, code)
        return idx

    def stores_of(self, userid: str) -> list[str]:
        return self.clerk_stores.get(userid, [])

    def decide(self, chat_id: str, owner: str, current: str | None = None) -> Decision:
        mine = self.stores_of(owner)
        if not mine:
            return Decision(None, "no_store")
        behind = self.join_way_of.get(chat_id)
        if behind in mine:
            return Decision(behind, "join_way")
        if current in mine:
            return Decision(current, "kept")
        if len(mine) == 1:
            return Decision(mine[0], "only_store")
        return Decision(None, "ambiguous")


def stores_of(s: Session, userid: str) -> list[str]:
    """The open stores listing `userid` as a clerk, by code."""
    return sorted(code for code, clerks in s.execute(select(Store.code, Store.clerks).where(Store.closed_at.is_(None)))
                  if userid in (clerks or []))


def decide_store(s: Session, chat_id: str, owner: str, current: str | None = None) -> Decision:
    return StoreIndex.load(s).decide(chat_id, owner, current)


def store_of_group(s: Session, chat_id: str, owner: str) -> str | None:
    """The store a group belongs to by the rule above (None: ambiguous or no store)."""
    row = s.get(GroupChat, chat_id)
    return decide_store(s, chat_id, owner, row.store_code if row else None).store_code


def _fixed(now: datetime):
    class Fixed:   # OutboxRepo wants a clock; a settle or handler has only its `now`
        @staticmethod
        def now() -> datetime:
            return now
    return Fixed()


def queue_join_way_repair(s: Session, store_code: str, chat_id: str, now: datetime, why: str) -> bool:
    """Take `chat_id` out of the store's join way at WeCom (update_join_way with the store's other
    groups), through the outbox, if the join way lists it."""
    st = s.get(Store, store_code)
    if st is None or not st.join_way_config_id or chat_id not in (st.join_way_chat_ids or []):
        return False
    return OutboxRepo(s, _fixed(now)).add(REPAIR_KIND, f"join_way_repair:{store_code}:{chat_id}:{why}",
                                          {"store_code": store_code, "drop": [chat_id], "why": why})


def _retarget_planned(s: Session, chat_id: str, owner: str, store_code: str) -> None:
    """The group's slots not fired yet go to its owner now (sender of the mass message, reminded)."""
    values = dict(owner=owner, store_code=store_code) if store_code else dict(
        owner=owner, status="skipped", reason="群不属于任何门店（已报运营）")
    s.execute(update(SlotDelivery).where(SlotDelivery.chat_id == chat_id, SlotDelivery.status == "planned")
              .values(**values).execution_options(synchronize_session=False))


def apply_decision(s: Session, g: GroupChat, owner: str, now: datetime, index: StoreIndex | None = None) -> Decision:
    """Set the group's owner and the store the rule gives; re-target its unfired slots; repair the
    join way of a store it left."""
    d = (index or StoreIndex.load(s)).decide(g.chat_id, owner, g.store_code or None)
    new_code = d.store_code or ""
    old_code, old_owner = g.store_code, g.owner
    if owner != old_owner or new_code != old_code:
        g.owner, g.store_code = owner, new_code
        _retarget_planned(s, g.chat_id, owner, new_code)
        if old_code and old_code != new_code:
            queue_join_way_repair(s, old_code, g.chat_id, now, "moved")
        log.info("group %s: owner %s -> %s, store %r -> %r (%s)", g.chat_id, old_owner, owner, old_code,
                 new_code, d.why)
    return d


def set_group_owner(s: Session, chat_id: str, owner: str, now: datetime) -> GroupChat | None:
    """Record a group's (new) owner and re-derive its store; None when the group is unknown here.
    From then on its mass messages name this owner as sender and its reminders reach them. A group
    left without a store has store_code "": see `unassigned` / `tell_ops_unassigned`."""
    g = s.get(GroupChat, chat_id)
    if g is None:
        return None
    apply_decision(s, g, owner, now)
    g.synced_at = now
    return g


def record_group(s: Session, info: dict, now: datetime, index: StoreIndex | None = None) -> tuple[GroupChat, Decision]:
    """A groupchat/get answer as the group's row (created if new): owner, name and store by the rule."""
    chat_id, owner = info["chat_id"], info.get("owner", "")
    g = s.get(GroupChat, chat_id)
    if g is None:
        d = (index or StoreIndex.load(s)).decide(chat_id, owner)
        insert_ignore(s, GroupChat, dict(chat_id=chat_id, store_code=d.store_code or "", owner=owner,
                                         name=info.get("name"), member_count=0))
        g = s.get(GroupChat, chat_id, populate_existing=True)
    else:
        d = apply_decision(s, g, owner, now, index)
    if info.get("name") and g.name != info["name"]:
        g.name = info["name"]
    if g.dismissed_at is not None:   # WeCom shows it again: not dismissed after all
        g.dismissed_at = None
    return g, d


def dismiss_group(s: Session, chat_id: str, now: datetime) -> GroupChat | None:
    """change_external_chat dismiss: out of its store's join way at once and out of every later slot."""
    g = s.get(GroupChat, chat_id)
    if g is None:
        return None
    if g.dismissed_at is None:
        g.dismissed_at = now
    g.member_count = 0
    s.execute(update(SlotDelivery).where(SlotDelivery.chat_id == chat_id, SlotDelivery.status == "planned")
              .values(status="skipped", reason="群已解散").execution_options(synchronize_session=False))
    for st in s.scalars(select(Store).where(Store.join_way_config_id.is_not(None))):
        if chat_id in (st.join_way_chat_ids or []):
            queue_join_way_repair(s, st.code, chat_id, now, "dismissed")
    return g


def unassigned(s: Session, chat_ids: Iterable[str] | None = None) -> list[tuple[GroupChat, str]]:
    """Live groups without a store, with why (ambiguous | no_store)."""
    q = select(GroupChat).where(GroupChat.store_code == "", GroupChat.dismissed_at.is_(None))
    if chat_ids is not None:
        q = q.where(GroupChat.chat_id.in_(list(chat_ids)))
    groups = list(s.scalars(q.order_by(GroupChat.chat_id)))
    if not groups:
        return []
    idx = StoreIndex.load(s)
    return [(g, idx.decide(g.chat_id, g.owner).why) for g in groups]


def unassigned_line(g: GroupChat, why: str, index: StoreIndex | None = None) -> str:
    """One line for ops, in Chinese."""
    where = ""
    if why == "ambiguous" and index is not None:
        where = "（" + "、".join(index.stores_of(g.owner)) + "）"
    return (f"客户群「{g.name or g.chat_id}」（{g.chat_id}）群主 {g.owner}：{WHY_ZH.get(why, why)}{where}，"
            "暂停推送。请把群转给门店店员，或调整门店配置后执行 wecom-bot sync。")


def tell_ops_unassigned(s: Session, clock, ops_userids, groups: list[tuple[GroupChat, str]], key: str, **kw) -> bool:
    """Report groups without a store to ops in the run's one batched message (bot.staff.ops).
    `clock` may be a datetime (a settle's `now`)."""
    if not groups:
        return False
    if isinstance(clock, datetime):
        clock = _fixed(clock)
    idx = StoreIndex.load(s)
    for g, why in groups:
        log.warning("group %s (owner %s) has no store: %s", g.chat_id, g.owner, why)
    return tell_ops(s, clock, ops_userids, [unassigned_line(g, why, idx) for g, why in groups], key, **kw)
