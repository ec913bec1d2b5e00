"""The WeCom side of QR health, beside the sync whose logic repairs it: member counts of the groups
behind each join way, and whether each store's join way and contact way still exist (the `full` and
`gone` findings). Runs every 5 minutes and on `wecom-bot qr check`."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from bot.clock import Clock
from bot.config import Store as StoreConfig
from bot.db.models import GroupChat, QrFinding, Store
from bot.funnel import alerts
from bot.funnel.facts import apply_member_list
from bot.funnel.findings import QrHealth
from bot.provisioning.sync import Provisioner
from bot.wecom.api.join_way import SCAN_JOIN_LIMIT
from bot.wecom.client import WeComClient, WeComError
from bot.wecom.errcodes import CONFIG_GONE

log = logging.getLogger(__name__)

COUNT_STALE = timedelta(hours=1)


def store_config(row: Store) -> StoreConfig:
    return StoreConfig(code=row.code, name=row.name, clerks=list(row.clerks), benefit=row.benefit)


def refresh_counts(sessions: sessionmaker[Session], client: WeComClient, chat_ids: list[str],
                   now: datetime) -> dict[str, int]:
    """Member counts of a join way's groups: stored ones, read again from WeCom when more than an
    hour old or near the scan cap (joins through callbacks keep them current in between)."""
    with sessions() as s:
        rows = {g.chat_id: g for g in s.scalars(select(GroupChat).where(GroupChat.chat_id.in_(chat_ids)))}
        stale = [ch for ch in chat_ids if ch not in rows or rows[ch].synced_at is None
                 or rows[ch].synced_at < now - COUNT_STALE or rows[ch].member_count >= SCAN_JOIN_LIMIT - 10]
    for chat_id in stale:
        info = client.external_contact_group_chat.get(chat_id)
        with sessions.begin() as s:
            apply_member_list(s, info, now)
    with sessions() as s:
        return dict(s.execute(select(GroupChat.chat_id, GroupChat.member_count).where(
            GroupChat.chat_id.in_(chat_ids))).all())


def _wecom_problems(st: Store, sessions: sessionmaker[Session], client: WeComClient,
                    now: datetime) -> dict[str, tuple[datetime, dict]]:
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
    counts_by_chat = refresh_counts(sessions, client, chats, now)
    full = chats and all(counts_by_chat.get(ch, 0) >= SCAN_JOIN_LIMIT for ch in chats)
    if full and not int(way.get("auto_create_room", 0)):
        return {"full": (now, {"groups": len(chats), "auto_create_room": 0})}
    return {}


def check_wecom_side(sessions: sessionmaker[Session], client: WeComClient, clock: Clock, health: QrHealth,
                     provisioner: Provisioner, store_codes: list[str] | None = None) -> dict[str, int]:
    """The scheduled / `qr check` pass: stalled for every store; full and gone by reading the
    join way and contact way at WeCom; repair what sync can repair. One store's WeCom error is
    logged and skipped: it never stops the pass for the stores after it. Returns counts."""
    now = clock.now()
    counts = {"stores": 0, "opened": 0, "resolved": 0, "repaired": 0, "failed": 0}
    with sessions() as s:
        stores = list(s.scalars(select(Store).where(Store.code.in_(store_codes)) if store_codes else select(Store)))
    for st in stores:
        counts["stores"] += 1
        try:
            problems = _wecom_problems(st, sessions, client, now)
        except WeComError as e:
            log.warning("qr check %s: %s", st.code, e)
            counts["failed"] += 1
            continue
        repaired_note = None
        if problems:
            # sync's logic swaps in groups with room, turns auto-create back on, recreates configs
            result = provisioner.sync_store(store_config(st))
            if result.changes and not result.error:
                repaired_note = "已自动修复：" + "；".join(result.changes) + "。"
                counts["repaired"] += 1
        with sessions.begin() as s:
            opened, cleared = [], []
            for kind in ("full", "gone"):
                if kind in problems and not repaired_note:
                    f = health.open(s, st.code, kind, *problems[kind])
                    if f:
                        opened.append(f)
                else:
                    cleared += health.resolve(s, st.code, (kind,), repaired_note)
            if repaired_note and problems:
                # say what was wrong and that it is fixed, in one message
                for kind, (since, evidence) in problems.items():
                    f = QrFinding(store_code=st.code, kind=kind, since=since, evidence=evidence, opened_at=now,
                                  resolved_at=now, repaired=repaired_note[:200])
                    s.add(f)
                    s.flush()
                    cleared.append(f)
            f = health.check_stalled(s, st.code, now)
            if f:
                opened.append(f)
            alerts.notify(s, clock, opened)
            alerts.notify(s, clock, cleared, resolved=True)
            counts["opened"] += len(opened)
            counts["resolved"] += len(cleared)
    return counts
