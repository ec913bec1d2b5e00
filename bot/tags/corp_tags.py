"""The ids of the corp tags the bot marks with, by (group name, tag name), read from `corp_tag`; a
missing one is looked up with get_corp_tag_list and, when WeCom has none, created with add_corp_tag
(into the group of that name, which WeCom creates on the first add: 「如果填写的groupname已经存在，
则会在此标签组下新建标签」, doc 92117). So one group for all stores, one tag per store, each created
once; a tag deleted at WeCom (mark_tag answers 40068) is forgotten and found or created again.

A tag someone made in the admin console under the same group and name is used as it is: marking
with it is allowed, editing or deleting it is not (「应用仅能编辑和删除本应用创建的标签」). The bot
renames the store tags it created when a store is renamed (edit_corp_tag) and never deletes tags."""

from __future__ import annotations

import logging
import threading

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from bot.clock import Clock
from bot.db.models import CorpTag
from bot.messaging.outbox import insert_ignore
from bot.wecom import errcodes
from bot.wecom.client import WeComClient, WeComError

log = logging.getLogger(__name__)


class CorpTags:
    def __init__(self, sessions: sessionmaker[Session], clock: Clock):
        self.sessions = sessions
        self.clock = clock
        self._lock = threading.Lock()   # one lookup-or-create at a time in a process (others wait, then read)

    def cached(self, group: str, name: str) -> CorpTag | None:
        with self.sessions() as s:
            return s.get(CorpTag, (group, name))

    def forget(self, group: str, name: str, tag_id: str) -> None:
        """WeCom no longer has `tag_id`: drop it (if another worker has not replaced it already)."""
        with self.sessions.begin() as s:
            s.execute(delete(CorpTag).where(CorpTag.group_name == group, CorpTag.name == name,
                                            CorpTag.tag_id == tag_id))

    def ensure(self, client: WeComClient, group: str, name: str) -> str:
        """The tag id of `name` in `group`: cached, else found at WeCom, else created there."""
        row = self.cached(group, name)
        if row is not None:
            return row.tag_id
        with self._lock:
            row = self.cached(group, name)
            if row is not None:
                return row.tag_id
            found, group_id = self._look_up(client, group, name)
            if found is None:
                found = self._create(client, group, name, group_id)
            return found

    def rename(self, client: WeComClient, group: str, old: str, new: str) -> dict:
        """Give the tag `old` the name `new` at WeCom and in the cache. Nothing to do (and said so in
        the result) when there is no such tag, it is not the bot's to edit, or `new` exists already:
        the next mark then finds or creates `new` as usual."""
        row = self.cached(group, old)
        if row is None:
            found, _ = self._look_up(client, group, old)
            row = self.cached(group, old) if found else None
        if row is None:
            return {"renamed": False, "why": "no such tag"}
        if not row.created_by_bot:
            return {"renamed": False, "why": "made in the admin console: not the bot's to edit"}
        if self.cached(group, new) is not None:
            return {"renamed": False, "why": "a tag of the new name exists"}
        try:
            client.corp_tags.edit_corp_tag(tag_id=row.tag_id, name=new)
        except WeComError as e:
            if e.errcode == errcodes.INVALID_TAG_ID:
                self.forget(group, old, row.tag_id)
                return {"renamed": False, "why": "gone at WeCom"}
            if e.errcode != errcodes.TAG_NAME_TAKEN:
                raise
            # taken: by this very tag when an earlier try's answer was lost, else by another tag
            found, _ = self._look_up(client, group, new)
            if found != row.tag_id:
                raise
            self.forget(group, old, row.tag_id)
            with self.sessions.begin() as s:   # read back as found: it is still the bot's own
                s.execute(update(CorpTag).where(CorpTag.group_name == group, CorpTag.name == new)
                          .values(created_by_bot=True))
            return {"renamed": True, "tag_id": row.tag_id, "adopted": True}
        with self.sessions.begin() as s:
            s.execute(delete(CorpTag).where(CorpTag.group_name == group, CorpTag.name == old))
            insert_ignore(s, CorpTag, dict(group_name=group, name=new, tag_id=row.tag_id, group_id=row.group_id,
                                           created_by_bot=True, seen_at=self.clock.now()))
        log.info("corp tag %s/%s renamed %s (%s)", group, old, new, row.tag_id)
        return {"renamed": True, "tag_id": row.tag_id}

    # -- WeCom --------------------------------------------------------------------------------
    def _look_up(self, client: WeComClient, group: str, name: str) -> tuple[str | None, str | None]:
        """Read the group's tags (by its id when a cached tag names it, else the whole library) and cache
        them all: the next store's tag needs no read. Returns (tag id or None, group id or None)."""
        known_group = self._group_id(group)
        groups = client.corp_tags.get_corp_tag_list(group_ids=[known_group]) if known_group else []
        if not any(g.get("group_name") == group and not g.get("deleted") for g in groups):
            groups = client.corp_tags.get_corp_tag_list()   # the group was deleted, or never cached
        tag_id = group_id = None
        for g in groups:
            if g.get("group_name") != group or g.get("deleted"):
                continue
            group_id = group_id or g["group_id"]
            for t in g.get("tag") or []:
                if t.get("deleted"):
                    continue
                self._remember(group, t["name"], t["id"], g["group_id"], created=False)
                if t["name"] == name and tag_id is None:
                    tag_id = t["id"]
        return tag_id, group_id

    def _create(self, client: WeComClient, group: str, name: str, group_id: str | None) -> str:
        try:
            res = client.corp_tags.add_corp_tag(names=[name], group_id=group_id, group_name=None if group_id else group)
        except WeComError as e:
            if e.errcode != errcodes.TAG_NAME_TAKEN:
                raise
            # made meanwhile (another process, or the admin console): use that one
            found, _ = self._look_up(client, group, name)
            if found is None:
                raise
            return found
        for t in res.get("tag") or []:
            if t.get("name") == name:
                self._remember(group, name, t["id"], res["group_id"], created=True)
                log.info("corp tag %s/%s created: %s", group, name, t["id"])
                return t["id"]
        raise WeComError(errcodes.BAD_RESPONSE, f"add_corp_tag answered no tag named {name!r}",
                         "externalcontact/add_corp_tag")

    # -- the cache ----------------------------------------------------------------------------
    def _group_id(self, group: str) -> str | None:
        with self.sessions() as s:
            return s.scalars(select(CorpTag.group_id).where(CorpTag.group_name == group).limit(1)).first()

    def _remember(self, group: str, name: str, tag_id: str, group_id: str, *, created: bool) -> None:
        with self.sessions.begin() as s:
            row = s.get(CorpTag, (group, name))
            if row is None:
                insert_ignore(s, CorpTag, dict(group_name=group, name=name, tag_id=tag_id, group_id=group_id,
                                               created_by_bot=created, seen_at=self.clock.now()))
            elif row.tag_id != tag_id:
                row.tag_id, row.group_id, row.created_by_bot = tag_id, group_id, created
                row.seen_at = self.clock.now()
