"""Which customer gets which tag, queued as outbox rows in the same transaction as the funnel fact.

One row per (fact, tag): the key is derived from the fact (`mark_tag:add:{event_id}:store:{code}`,
`mark_tag:{join fact key}:joined`), so a redelivered callback or a second read of the group marks
nothing again; a customer who adds the clerk again (a new fact) is marked again, which WeCom
treats as a no-op when the tag is still there."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.config import TagSettings
from bot.db.models import FunnelFact, Outbox, Store
from bot.funnel.facts import last_add
from bot.messaging.outbox import insert_ignore
from bot.wecom.api.tags import MAX_NAME

log = logging.getLogger(__name__)

KIND = "mark_tag"
# Tags wait out the welcome's 20 s and come after every other row: a burst of adds must not make
# its welcomes share the workers with its tags.
DELAY = timedelta(seconds=30)
PRIORITY = 2


def store_tag_name(store: Store) -> str:
    """The store's tag: its name, cut to WeCom's 30 characters (doc 92117)."""
    if len(store.name) > MAX_NAME:
        log.warning("store %s: name over %d characters, its tag is %r", store.code, MAX_NAME, store.name[:MAX_NAME])
    return store.name[:MAX_NAME]


RENAME = "rename_corp_tag"


def queue_rename(s: Session, now: datetime, tags: TagSettings, store_code: str, old: str, new: str) -> bool:
    """The store was renamed: its tag follows (the customers tagged with it keep their one store tag), and
    marks still waiting carry the new name, so none of them makes the old tag again."""
    old, new = old[:MAX_NAME], new[:MAX_NAME]
    if not tags.enabled or old == new:
        return False
    for row in s.scalars(select(Outbox).where(Outbox.kind == KIND, Outbox.status.in_(("pending", "unknown")))):
        p = row.payload or {}
        if p.get("store_code") == store_code and p.get("group") == tags.store_group and p.get("tag") == old:
            row.payload = {**p, "tag": new}
    return insert_ignore(s, Outbox, dict(
        key=f"{RENAME}:{store_code}:{new}:{now:%Y%m%d%H%M%S}", kind=RENAME, status="pending", created_at=now, deadline=None,
        next_attempt_at=now, attempts=0, priority=PRIORITY,
        payload={"group": tags.store_group, "old": old, "new": new, "store_code": store_code}))


def queue_mark(s: Session, now: datetime, *, key: str, userid: str, external_userid: str, group: str, tag: str,
               store_code: str | None) -> bool:
    """Queue one mark_tag; False when this fact's mark was queued already."""
    return insert_ignore(s, Outbox, dict(
        key=key, kind=KIND, status="pending", created_at=now, deadline=None, next_attempt_at=now + DELAY, attempts=0,
        priority=PRIORITY, payload={"userid": userid, "external_userid": external_userid, "group": group[:MAX_NAME],
                             "tag": tag[:MAX_NAME], "store_code": store_code}))


def mark_added(s: Session, now: datetime, tags: TagSettings, *, store: Store, userid: str, external_userid: str,
               event_id: int) -> bool:
    """A customer added `userid` through the store's QR: the store's tag on that relation."""
    if not tags.enabled:
        return False
    return queue_mark(s, now, key=f"{KIND}:add:{event_id}:store:{store.code}", userid=userid,
                      external_userid=external_userid, group=tags.store_group, tag=store_tag_name(store),
                      store_code=store.code)


def mark_joined(s: Session, now: datetime, tags: TagSettings, joins: list[FunnelFact]) -> int:
    """Customers joined a store's group: 已进群 on their relation with the clerk they added there (else
    with the clerk they added last). A member who added no clerk has no relation to tag: mark_tag needs
    「external_userid是userid的外部联系人」 (doc 92118)."""
    if not tags.enabled:
        return 0
    queued = 0
    for fact in joins:
        if not fact.store_code:
            continue
        add = last_add(s, fact.external_userid, store_code=fact.store_code) or last_add(s, fact.external_userid)
        if add is None or not add.userid:
            continue
        queued += queue_mark(s, now, key=f"{KIND}:{fact.key}:joined", userid=add.userid,
                             external_userid=fact.external_userid, group=tags.joined_group, tag=tags.joined_tag,
                             store_code=fact.store_code)
    return queued
