"""The WeCom side of QR health, beside the sync whose logic repairs it: member counts of the groups
behind each join way, and whether each store's join way and contact way still exist (the `full` and
`gone` findings). Runs every 5 minutes and on `wecom-bot qr check`: stores are checked
`qr_health.concurrency` at a time (each takes 2+ WeCom calls, so 4,800 of them one by one would not fit
the 5 minutes), and one store's failure is logged and counted, never the end of the pass."""

from __future__ import annotations

import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from bot.clock import Clock
from bot.config import Store as StoreConfig
from bot.db.engine import reads_of
from bot.db.models import GroupChat, Store
from bot.funnel import alerts
from bot.funnel.facts import apply_member_list
from bot.funnel.findings import QrHealth
from bot.provisioning.sync import Provisioner
from bot.wecom.api.join_way import SCAN_JOIN_LIMIT
from bot.wecom.client import WeComClient, WeComError
from bot.wecom.errcodes import CONFIG_GONE, INVALID_CHAT_ID, NOT_CUSTOMER_GROUP

log = logging.getLogger(__name__)

COUNT_STALE = timedelta(hours=1)


def store_config(row: Store) -> StoreConfig:
    return StoreConfig(code=row.code, name=row.name, clerks=list(row.clerks), benefit=row.benefit)


def refresh_counts(sessions: sessionmaker[Session], client: WeComClient, chat_ids: list[str],
                   now: datetime, on_joins=None) -> dict[str, int]:
    """Member counts of a join way's groups: stored ones, read again from WeCom when more than an
    hour old or near the scan cap (joins through callbacks keep them current in between). Joins a
    read finds that no callback told of go to on_joins(session, facts, now), as a callback's do."""
    with reads_of(sessions)() as s:
        rows = {g.chat_id: g for g in s.scalars(select(GroupChat).where(GroupChat.chat_id.in_(chat_ids)))}
        stale = [ch for ch in chat_ids if ch not in rows or rows[ch].synced_at is None
                 or rows[ch].synced_at < now - COUNT_STALE or rows[ch].member_count >= SCAN_JOIN_LIMIT - 10]
    gone, unchanged = [], []
    for chat_id in stale:
        try:
            info = client.external_contact_group_chat.get(chat_id)
        except WeComError as e:
            if e.errcode not in (INVALID_CHAT_ID, NOT_CUSTOMER_GROUP):
                raise
            gone.append(chat_id)   # dismissed: no room for anyone; sync swaps it out
            continue
        row = rows.get(chat_id)
        if row is not None and row.member_version and row.member_version == info.get("member_version"):
            unchanged.append(chat_id)   # the members of the last read: only the read time moves
            continue
        _record_members(sessions, info, now, on_joins)
    if unchanged:
        with sessions.begin() as s:
            s.execute(update(GroupChat).where(GroupChat.chat_id.in_(unchanged)).values(synced_at=now))
    with reads_of(sessions)() as s:
        counts = dict(s.execute(select(GroupChat.chat_id, GroupChat.member_count).where(
            GroupChat.chat_id.in_(chat_ids))).all())
    return {**counts, **dict.fromkeys(gone, SCAN_JOIN_LIMIT)}


def _record_members(sessions: sessionmaker[Session], info: dict, now: datetime, on_joins=None) -> None:
    def record(s: Session) -> None:
        joins = apply_member_list(s, info, now)
        if joins and on_joins:
            on_joins(s, joins, now)
    try:
        with sessions.begin() as s:
            record(s)
    except IntegrityError:
        # another pass (or a join being settled) stored the same new members just now: merge into theirs
        with sessions.begin() as s:
            record(s)


def _wecom_problems(st: Store, sessions: sessionmaker[Session], client: WeComClient,
                    now: datetime, on_joins=None) -> dict[str, tuple[datetime, dict]]:
    """What is wrong with the store's QR codes at WeCom: {kind: (since, evidence)}."""
    if not st.join_way_config_id or not st.contact_way_config_id:
        return {"gone": (now, {"detail": "门店还没有" + ("群二维码" if not st.join_way_config_id else "店员二维码")})}
    try:
        way = client.join_way.get_join_way(st.join_way_config_id)
        client.external_contact.get_contact_way(st.contact_way_config_id)
    except WeComError as e:
        if e.errcode not in CONFIG_GONE:
            raise
        return {"gone": (now, {"detail": f"企业微信找不到门店的二维码配置（{e.errcode}）"})}
    chats = way.get("chat_id_list") or []
    counts_by_chat = refresh_counts(sessions, client, chats, now, on_joins)
    full = chats and all(counts_by_chat.get(ch, 0) >= SCAN_JOIN_LIMIT for ch in chats)
    if full and not int(way.get("auto_create_room", 0)):
        return {"full": (now, {"groups": len(chats), "auto_create_room": 0})}
    return {}


def check_wecom_side(sessions: sessionmaker[Session], client: WeComClient, clock: Clock, health: QrHealth,
                     provisioner: Provisioner, store_codes: list[str] | None = None, *,
                     concurrency: int | None = None) -> dict[str, int]:
    """The scheduled / `qr check` pass: stalled for every store; full and gone by reading the
    join way and contact way at WeCom; repair what sync can repair. Stores run `concurrency` at a time
    (default qr_health.concurrency), each in its own transactions; one store's failure, a WeCom error
    or any other, is logged with its code and counted as failed. Returns counts."""
    with reads_of(sessions)() as s:
        q = select(Store).where(Store.closed_at.is_(None)).order_by(Store.code)   # a closed store: history only
        stores = list(s.scalars(q.where(Store.code.in_(store_codes)) if store_codes else q))
        health.chain_rate(s, clock.now())   # once, here, not inside a store's write transaction
    counts = Counter({"stores": 0, "opened": 0, "resolved": 0, "repaired": 0, "failed": 0})
    workers = max(1, concurrency or health.cfg.concurrency)

    def one(st: Store) -> dict[str, int]:
        try:
            return {"stores": 1, **_check_store(st, sessions, client, clock, health, provisioner)}
        except WeComError as e:
            log.warning("qr check %s: %s", st.code, e)
        except Exception:   # noqa: BLE001 — a bug or a database error at one store must not end the pass
            log.exception("qr check %s failed", st.code)
        return {"stores": 1, "failed": 1}

    if workers == 1 or len(stores) <= 1:
        for st in stores:
            counts.update(one(st))
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="qr-check") as pool:
            for r in pool.map(one, stores):
                counts.update(r)
    return dict(counts)


def _check_store(st: Store, sessions: sessionmaker[Session], client: WeComClient, clock: Clock,
                 health: QrHealth, provisioner: Provisioner) -> dict[str, int]:
    # Taken before WeCom is read: a repair or a finding another pass commits after this is newer
    # than what this pass saw, so this pass neither reopens nor clears it.
    seen = clock.now()
    problems = _wecom_problems(st, sessions, client, seen, provisioner.on_joins)
    out = {"opened": 0, "resolved": 0, "repaired": 0}
    repaired_note = None
    if problems and st.clerks:   # a store whose last clerk left has nothing to repair with (no_clerk tells ops)
        # sync's logic swaps in groups with room, turns auto-create back on, recreates configs
        result = provisioner.sync_store(store_config(st))
        if result.changes and not result.error:
            repaired_note = "已自动修复：" + "；".join(result.changes) + "。"
            out["repaired"] = 1
    with sessions.begin() as s:
        opened, cleared = [], []
        for kind in ("full", "gone"):
            if kind in problems and not repaired_note:
                f = health.open(s, st.code, kind, *problems[kind], seen_at=seen)
                if f:
                    opened.append(f)
                continue
            done = health.resolve(s, st.code, (kind,), repaired_note, seen_at=seen)
            cleared += done
            if kind in problems and not done:
                # found and fixed in this pass: say what was wrong and that it is fixed, in one message
                f = health.repaired(s, st.code, kind, *problems[kind], repaired_note, seen_at=seen)
                if f:
                    cleared.append(f)
        f = health.check_stalled(s, st.code, clock.now())
        if f:
            opened.append(f)
        alerts.notify(s, clock, opened)
        alerts.notify(s, clock, cleared, resolved=True)
        out["opened"], out["resolved"] = len(opened), len(cleared)
    return out
