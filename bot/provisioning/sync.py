"""`wecom-bot sync`: make WeCom match the stores in config, idempotently.

Per store: read the clerks' customer groups (groupchat/list with owner filter, groupchat/get),
then create or repair the clerk QR (contact way, state = store code) and the group QR (join way
over up to 5 groups with room, auto_create_room on, room_base_name = store name, state = store
code), and upload the group QR image once (media for welcomes). A second run changes nothing at
WeCom: it reads, compares and writes only what differs. A config deleted at WeCom is recreated.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from bot.clock import Clock
from bot.config import Store as StoreConfig
from bot.db.engine import reads_of
from bot.db.models import GroupChat, Store
from bot.funnel.facts import apply_member_list
from bot.media import MediaLibrary
from bot.welcome.executors import ensure_group_qr_media
from bot.wecom import errcodes
from bot.wecom.api.join_way import MAX_CHATS, SCAN_JOIN_LIMIT
from bot.wecom.client import WeComClient, WeComError
from bot.wecom.errcodes import CONFIG_GONE

log = logging.getLogger(__name__)



@dataclass
class StoreSyncResult:
    code: str
    changes: list[str] = field(default_factory=list)
    error: str | None = None
    groups: int = 0


@dataclass
class SyncReport:
    results: list[StoreSyncResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def changed(self) -> list[StoreSyncResult]:
        return [r for r in self.results if r.changes]

    @property
    def failed(self) -> list[StoreSyncResult]:
        return [r for r in self.results if r.error]

    def summary(self) -> str:
        changes = sum(len(r.changes) for r in self.results)
        return (f"{len(self.results)} stores synced in {self.seconds:.1f}s: {len(self.changed)} changed "
                f"({changes} changes), {len(self.results) - len(self.changed) - len(self.failed)} unchanged, "
                f"{len(self.failed)} failed")


def pick_join_chats(groups: Sequence[GroupChat], current: Sequence[str]) -> list[str]:
    """Up to 5 groups with room for scan joins, keeping the current ones first (a stable pick makes a
    re-run a no-op). With no room anywhere, keep the current/least-full ones: auto_create_room opens
    a new group when they are full."""
    room = {g.chat_id for g in groups if g.member_count < SCAN_JOIN_LIMIT}
    ordered = [c for c in current if c in room] + sorted(
        (g.chat_id for g in groups if g.chat_id in room and g.chat_id not in current),
        key=lambda c: next(g.member_count for g in groups if g.chat_id == c))
    if ordered:
        return ordered[:MAX_CHATS]
    known = {g.chat_id for g in groups}
    kept = [c for c in current if c in known]
    return (kept or [g.chat_id for g in sorted(groups, key=lambda g: g.member_count)])[:MAX_CHATS]


class Provisioner:
    def __init__(self, sessions: sessionmaker[Session], client: WeComClient, clock: Clock, media: MediaLibrary):
        self.sessions = sessions
        self.reads = reads_of(sessions)
        self.client = client
        self.clock = clock
        self.media = media

    def sync(self, stores: Sequence[StoreConfig], *, concurrency: int = 4,
             progress: Callable[[int, int, StoreSyncResult], None] | None = None) -> SyncReport:
        report = SyncReport()
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="sync") as pool:
            futures = [pool.submit(self.sync_store, s) for s in stores]
            for n, fut in enumerate(as_completed(futures), start=1):
                result = fut.result()
                report.results.append(result)
                if progress:
                    progress(n, len(stores), result)
        report.seconds = time.perf_counter() - started
        return report

    def sync_store(self, cfg: StoreConfig) -> StoreSyncResult:
        result = StoreSyncResult(cfg.code)
        try:
            self._upsert_store(cfg)
            groups = self._sync_groups(cfg, result)
            self._contact_way(cfg, result)
            self._join_way(cfg, groups, result)
        except WeComError as e:
            result.error = str(e)
            log.warning("sync %s: %s", cfg.code, e)
        return result

    def _upsert_store(self, cfg: StoreConfig) -> None:
        with self.sessions.begin() as s:
            store = s.get(Store, cfg.code) or Store(code=cfg.code, name=cfg.name)
            store.name, store.clerks, store.benefit = cfg.name, list(cfg.clerks), cfg.benefit
            s.add(store)

    def _sync_groups(self, cfg: StoreConfig, result: StoreSyncResult) -> list[GroupChat]:
        api = self.client.external_contact_group_chat
        now = self.clock.now()
        groups, infos = [], []
        for chat_id in api.list_owned(list(cfg.clerks)):
            try:
                info = api.get(chat_id)
            except WeComError as e:
                if e.errcode in (errcodes.NOT_CUSTOMER_GROUP, errcodes.INVALID_CHAT_ID):
                    continue
                raise
            infos.append(info)
            groups.append(GroupChat(chat_id=chat_id, store_code=cfg.code, owner=info.get("owner", ""),
                                    name=info.get("name"), member_count=len(info.get("member_list", [])),
                                    member_version=info.get("member_version"), synced_at=now))
        with self.sessions.begin() as s:
            for g in groups:
                s.merge(g)
            s.flush()
            for info in infos:  # the member lists: a baseline for join attribution and the scan cap
                apply_member_list(s, info, now)
        result.groups = len(groups)
        return groups

    def _contact_way(self, cfg: StoreConfig, result: StoreSyncResult) -> None:
        api = self.client.external_contact
        want_type = 1 if len(cfg.clerks) == 1 else 2
        with self.reads() as s:
            config_id = s.get(Store, cfg.code).contact_way_config_id
        current = None
        if config_id:
            try:
                current = api.get_contact_way(config_id)["contact_way"]
            except WeComError as e:
                if e.errcode not in CONFIG_GONE:
                    raise
                result.changes.append("contact way gone at WeCom: recreated")
        if current is None:
            res = api.add_contact_way(type=want_type, scene=2, remark=cfg.code, skip_verify=True,
                                      state=cfg.code, user=list(cfg.clerks))
            config_id, qr_code = res["config_id"], res.get("qr_code")
            if "contact way gone at WeCom: recreated" not in result.changes:
                result.changes.append("contact way created")
        else:
            qr_code = current.get("qr_code")
            if (current.get("state") != cfg.code or sorted(current.get("user") or []) != sorted(cfg.clerks)
                    or int(current.get("type", want_type)) != want_type):
                if int(current.get("type", want_type)) != want_type:
                    # type cannot be updated: replace the config
                    api.del_contact_way(config_id)
                    res = api.add_contact_way(type=want_type, scene=2, remark=cfg.code, skip_verify=True,
                                              state=cfg.code, user=list(cfg.clerks))
                    config_id, qr_code = res["config_id"], res.get("qr_code")
                    result.changes.append("contact way replaced (clerk count changed)")
                else:
                    api.update_contact_way(config_id, cfg.code, skip_verify=True, state=cfg.code,
                                           user=list(cfg.clerks))
                    result.changes.append("contact way repaired")
        with self.sessions.begin() as s:
            store = s.get(Store, cfg.code)
            store.contact_way_config_id, store.contact_way_qr_code = config_id, qr_code

    def _join_way(self, cfg: StoreConfig, groups: list[GroupChat], result: StoreSyncResult) -> None:
        api = self.client.join_way
        if not groups:
            result.error = (f"no customer groups owned by {', '.join(cfg.clerks)}: "
                            "a clerk must create one in WeCom before the store has a group QR")
            return
        with self.reads() as s:
            store = s.get(Store, cfg.code)
            config_id, current_chats = store.join_way_config_id, list(store.join_way_chat_ids or [])
        current = None
        if config_id:
            try:
                current = api.get_join_way(config_id)
                current_chats = list(current.get("chat_id_list") or [])
            except WeComError as e:
                if e.errcode not in CONFIG_GONE:
                    raise
                result.changes.append("join way gone at WeCom: recreated")
        chats = pick_join_chats(groups, current_chats)
        spec = dict(chat_ids=chats, state=cfg.code, room_base_name=cfg.name, remark=cfg.code)
        if current is None:
            config_id = api.add_join_way(**spec)
            if "join way gone at WeCom: recreated" not in result.changes:
                result.changes.append("join way created")
        elif (list(current.get("chat_id_list") or []) != chats or current.get("state") != cfg.code
              or int(current.get("auto_create_room", 0)) != 1 or current.get("room_base_name") != cfg.name):
            api.update_join_way(config_id, **spec)
            result.changes.append("join way repaired")
        qr_code = api.get_join_way(config_id).get("qr_code") if current is None or result.changes else \
            current.get("qr_code")
        with self.sessions.begin() as s:
            store = s.get(Store, cfg.code)
            store.join_way_config_id, store.join_way_qr_code, store.join_way_chat_ids = config_id, qr_code, chats
            store.synced_at = self.clock.now()
        if qr_code:
            ensure_group_qr_media(self.media, self.client, cfg.code, qr_code)
