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

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from bot.clock import Clock
from bot.config import Store as StoreConfig
from bot.db.engine import reads_of
from bot.db.models import GroupChat, Outbox, QrFinding, SlotDelivery, Store
from bot.funnel.facts import apply_member_list
from bot.tags.marks import queue_rename, store_tag_name
from bot.media import MediaLibrary
from bot.provisioning.groups import StoreIndex, record_group, tell_ops_unassigned, unassigned
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
    # groups of this store's clerks that the store rule gives to no store: (chat_id, owner, why)
    unassigned: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass
class SyncReport:
    results: list[StoreSyncResult] = field(default_factory=list)
    seconds: float = 0.0
    retired: list[Store] = field(default_factory=list)    # open in the database, gone from the config
    staff: object = None   # bot.staff.roster.StaffReport: clerks gone, pending handovers

    @property
    def unassigned(self) -> dict[str, tuple[str, str]]:
        """chat_id -> (owner, why): groups the store rule gives to no store (reported to ops)."""
        return {c: (o, w) for r in self.results for c, o, w in r.unassigned}

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
    def __init__(self, sessions: sessionmaker[Session], client: WeComClient, clock: Clock, media: MediaLibrary,
                 ops_userids: Sequence[str] = ()):
        self.ops_userids = list(ops_userids)   # told of groups the store rule gives to no store
        self.roster = None      # bot.staff.roster.Roster (bootstrap): the staff step before the stores
        # (session, join facts, now) -> None (bootstrap): what a join found here sets off, as a callback's would
        self.on_joins = None
        self.tags = None        # TagSettings (bootstrap): a renamed store's tag is renamed with it
        self.sessions = sessions
        self.reads = reads_of(sessions)
        self.client = client
        self.clock = clock
        self.media = media

    def sync(self, stores: Sequence[StoreConfig], *, concurrency: int = 4,
             progress: Callable[[int, int, StoreSyncResult], None] | None = None) -> SyncReport:
        report = SyncReport()
        started = time.perf_counter()
        if self.roster is not None:   # staff first: a clerk who is gone leaves the QR and is handed over
            report.staff = self.roster.reconcile(self.sessions, self.client, stores)
            stores = report.staff.effective(stores)
            unstaffed = [cfg for cfg in stores if not cfg.clerks]
            stores = [cfg for cfg in stores if cfg.clerks]
            report.results += [StoreSyncResult(cfg.code, error="no clerk employed any more (finding no_clerk)")
                               for cfg in unstaffed]
        # Every store first, then one index of clerks and join ways: a group's store is then decided
        # the same whichever store's sync reads it first.
        for i in range(0, len(stores), 500):
            with self.sessions.begin() as s:
                for cfg in stores[i:i + 500]:
                    self._upsert(s, cfg)
        with self.reads() as s:
            index = StoreIndex.load(s)
            report.retired = self.retired(s, stores)
        with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="sync") as pool:
            futures = [pool.submit(self.sync_store, s, index) for s in stores]
            for n, fut in enumerate(as_completed(futures), start=1):
                result = fut.result()
                report.results.append(result)
                if progress:
                    progress(n, len(stores), result)
        self._tell_ops_unassigned(report)
        if report.staff is not None:
            self.roster.after_sync(self.sessions, stores, report.staff)
        report.seconds = time.perf_counter() - started
        return report

    def _tell_ops_unassigned(self, report: SyncReport) -> None:
        if not report.unassigned:
            return
        with self.sessions.begin() as s:
            found = unassigned(s, list(report.unassigned))
            tell_ops_unassigned(s, self.clock, self.ops_userids, found, f"sync:{self.clock.now():%Y%m%dT%H%M%S}")

    @staticmethod
    def retired(s: Session, configured: Sequence[StoreConfig]) -> list[Store]:
        """Stores still open here that the config no longer lists."""
        codes = {c.code for c in configured}
        return [st for st in s.scalars(select(Store).where(Store.closed_at.is_(None)).order_by(Store.code))
                if st.code not in codes]

    def prune(self, stores: Sequence[Store], *, apply: bool) -> list[str]:
        """`sync --prune`: what closing each retired store means (a dry run), or, with apply, doing it:
        its contact way and join way deleted at WeCom, the store marked closed (no broadcasts, no QR
        checks from then on; its rows stay for the reports). One line per store, for the operator."""
        lines = []
        for st in stores:
            with self.reads() as s:
                n = s.scalar(select(func.count()).select_from(GroupChat).where(
                    GroupChat.store_code == st.code, GroupChat.dismissed_at.is_(None))) or 0
            what = [f"del_contact_way {st.contact_way_config_id}" if st.contact_way_config_id else "",
                    f"del_join_way {st.join_way_config_id}" if st.join_way_config_id else "",
                    f"no more broadcasts to its {n} groups, no QR checks"]
            head = f"{st.code} {st.name}: " + "; ".join(w for w in what if w)
            if not apply:
                lines.append(head + " (its history stays in the reports)")
                continue
            try:
                self._close_store(st)
            except WeComError as e:
                lines.append(f"{st.code} {st.name}: not closed ({e}); the next `sync --prune --apply` tries again")
                continue
            lines.append(head + ": done, store closed")
        return lines

    def _close_store(self, st: Store) -> None:
        # WeCom first: a config already gone there (deleted by hand, or by a run that died before the
        # database noted it) counts as deleted.
        for config_id, delete in ((st.contact_way_config_id, self.client.external_contact.del_contact_way),
                                  (st.join_way_config_id, self.client.join_way.del_join_way)):
            if not config_id:
                continue
            try:
                delete(config_id)
            except WeComError as e:
                if e.errcode not in CONFIG_GONE:
                    raise
        now = self.clock.now()
        with self.sessions.begin() as s:
            row = s.get(Store, st.code)
            row.closed_at = now
            row.contact_way_config_id = row.contact_way_qr_code = None
            row.join_way_config_id = row.join_way_qr_code = None
            row.join_way_chat_ids = []
            s.execute(update(SlotDelivery).where(SlotDelivery.store_code == st.code,
                                                 SlotDelivery.status.in_(("planned", "queued")))
                      .values(status="skipped", reason="门店已关闭"))
            # the store's mass messages queued and not yet sent go nowhere now (an uncertain one may be
            # at WeCom already: it is left to its reconcile)
            s.execute(update(Outbox).where(Outbox.kind == "add_msg_template", Outbox.status == "pending",
                                           Outbox.uncertain.is_(False), Outbox.key.like(f"gm:%:{st.code}"))
                      .values(status="dead", last_error="store closed before sending", done_at=now)
                      .execution_options(synchronize_session=False))
            s.execute(update(QrFinding).where(QrFinding.store_code == st.code, QrFinding.resolved_at.is_(None))
                      .values(resolved_at=now, open_key=None, repaired="门店已关闭"))
        log.info("store %s closed: its contact way and join way deleted at WeCom", st.code)

    def sync_store(self, cfg: StoreConfig, index: StoreIndex | None = None) -> StoreSyncResult:
        result = StoreSyncResult(cfg.code)
        try:
            if index is None:   # one store alone (a QR-check repair): its row here, the index read now
                self._upsert_store(cfg)
                with self.reads() as s:
                    index = StoreIndex.load(s)
            groups = self._sync_groups(cfg, result, index)
            self._contact_way(cfg, result)
            self._join_way(cfg, groups, result)
        except WeComError as e:
            result.error = str(e)
            log.warning("sync %s: %s", cfg.code, e)
        except Exception as e:   # noqa: BLE001 — one store's bug or database error must not end the sync
            result.error = f"{type(e).__name__}: {e}"
            log.exception("sync %s failed", cfg.code)
        return result

    def _upsert_store(self, cfg: StoreConfig) -> None:
        with self.sessions.begin() as s:
            self._upsert(s, cfg)

    def _upsert(self, s: Session, cfg: StoreConfig) -> None:
        store = s.get(Store, cfg.code) or Store(code=cfg.code, name=cfg.name)
        if self.tags is not None and store.name != cfg.name:
            queue_rename(s, self.clock.now(), self.tags, cfg.code, store_tag_name(store),
                         store_tag_name(Store(code=cfg.code, name=cfg.name)))
        store.name, store.clerks, store.benefit = cfg.name, list(cfg.clerks), cfg.benefit
        store.closed_at = None   # listed again: open again (sync recreates its QR codes)
        s.add(store)

    def _sync_groups(self, cfg: StoreConfig, result: StoreSyncResult, index: StoreIndex) -> list[GroupChat]:
        """The clerks' groups as read from WeCom; those the store rule gives to this store are returned
        (the candidates for its join way). A clerk's group of another store is recorded for that one."""
        api = self.client.external_contact_group_chat
        now = self.clock.now()
        infos = []
        for chat_id in api.list_owned(list(cfg.clerks)):
            try:
                infos.append(api.get(chat_id))
            except WeComError as e:
                if e.errcode in (errcodes.NOT_CUSTOMER_GROUP, errcodes.INVALID_CHAT_ID):
                    continue
                raise
        # One lock order for every store's sync: two stores sharing a clerk write the same rows.
        infos.sort(key=lambda i: i["chat_id"])
        mine = []
        with self.sessions.begin() as s:
            for info in infos:
                g, d = record_group(s, info, now, index)
                if d.store_code == cfg.code:
                    mine.append(g.chat_id)
                elif d.store_code is None:
                    result.unassigned.append((g.chat_id, g.owner, d.why))
            s.flush()
            found = []
            for info in infos:  # the member lists: a baseline for join attribution and the scan cap
                found += apply_member_list(s, info, now)
            if found and self.on_joins:   # joins whose callbacks never came; once, after every group's
                self.on_joins(s, found, now)   # row: group rows, then store rows, as a join callback locks them
            groups = [GroupChat(chat_id=g.chat_id, store_code=g.store_code, owner=g.owner, name=g.name,
                                member_count=g.member_count)
                      for g in s.scalars(select(GroupChat).where(GroupChat.chat_id.in_(mine)))]
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
            res = self._add_contact_way(cfg, want_type, result)
            config_id, qr_code = res["config_id"], res.get("qr_code")
            if "contact way gone at WeCom: recreated" not in result.changes:
                result.changes.append("contact way created")
        else:
            qr_code = current.get("qr_code")
            # A multi-clerk way may hold one clerk (after a departure) and the counter QR stays; only a
            # single-clerk way that must take several is replaced (type cannot be updated).
            replace = int(current.get("type", want_type)) == 1 and want_type == 2
            if (current.get("state") != cfg.code or sorted(current.get("user") or []) != sorted(cfg.clerks)
                    or replace):
                if replace:
                    # type cannot be updated: replace the config
                    api.del_contact_way(config_id)
                    res = self._add_contact_way(cfg, want_type, result)
                    config_id, qr_code = res["config_id"], res.get("qr_code")
                    result.changes.append("contact way replaced (clerk count changed)")
                else:
                    api.update_contact_way(config_id, cfg.code, skip_verify=True, state=cfg.code,
                                           user=list(cfg.clerks))
                    result.changes.append("contact way repaired")
        with self.sessions.begin() as s:
            store = s.get(Store, cfg.code)
            store.contact_way_config_id, store.contact_way_qr_code = config_id, qr_code

    def _add_contact_way(self, cfg: StoreConfig, want_type: int, result: StoreSyncResult) -> dict:
        """add_contact_way at most once: after a lost answer, the config is looked up by its state
        among those created since (list_contact_way) and adopted, or created only if WeCom has none."""
        started = int(self.clock.now().timestamp())
        spec = dict(type=want_type, scene=2, remark=cfg.code, skip_verify=True, state=cfg.code, user=list(cfg.clerks))
        try:
            return self.client.external_contact.add_contact_way(**spec)
        except WeComError as e:
            if e.errcode != errcodes.UNKNOWN_OUTCOME:
                raise
        found = self.client.contact_way.find_by_state(cfg.code, start_time=started - 60,
                                                      end_time=int(self.clock.now().timestamp()) + 60)
        if found:
            log.info("sync %s: contact way %s was created before its answer was lost: adopted", cfg.code,
                     found["config_id"])
            result.changes.append("contact way adopted after a lost answer")
            return found
        return self.client.external_contact.add_contact_way(**spec)

    def _add_join_way(self, cfg: StoreConfig, spec: dict, result: StoreSyncResult) -> str:
        """add_join_way is not resent blind either; but WeCom lists no join ways (only add, get,
        update, del exist), so after a lost answer the one that may exist cannot be found: a new one
        is made and the stray (unused, never shown to anyone) is said in the result."""
        try:
            return self.client.join_way.add_join_way(**spec)
        except WeComError as e:
            if e.errcode != errcodes.UNKNOWN_OUTCOME:
                raise
        log.warning("sync %s: add_join_way answer lost; created again (a stray join way may exist at WeCom)", cfg.code)
        result.changes.append("join way created again after a lost answer (a stray, unused one may exist)")
        return self.client.join_way.add_join_way(**spec)

    def _join_way(self, cfg: StoreConfig, groups: list[GroupChat], result: StoreSyncResult) -> None:
        api = self.client.join_way
        if not groups:
            result.error = (f"no customer groups owned by {', '.join(cfg.clerks)}: "
                            "a clerk must create one in WeCom before the store has a group QR")
            if result.unassigned:
                result.error += (f" ({len(result.unassigned)} of their groups belong to no store by the store rule: "
                                 "reported to ops)")
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
            config_id = self._add_join_way(cfg, spec, result)
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
