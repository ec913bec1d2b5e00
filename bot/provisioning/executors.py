"""The update_join_way outbox kind: take a group out of its store's join way at once (dismissed, or
moved to another store by an owner change) instead of waiting for the next sync or QR check."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from bot.db.engine import reads_of
from bot.db.models import GroupChat, Outbox, Store
from bot.messaging.outbox import Executor, Outcome, default_decide
from bot.provisioning.groups import REPAIR_KIND
from bot.provisioning.checks import store_config
from bot.provisioning.sync import pick_join_chats
from bot.wecom.client import WeComClient, WeComError
from bot.wecom.errcodes import CONFIG_GONE

log = logging.getLogger(__name__)


def join_way_repair_executor(sessions: sessionmaker[Session]) -> Executor:
    reads = reads_of(sessions)

    def send(client: WeComClient, row: Outbox) -> dict:
        code, drop = row.payload["store_code"], set(row.payload.get("drop", []))
        with reads() as s:
            st = s.get(Store, code)
            if st is None or not st.join_way_config_id or st.closed_at is not None:
                return {"skipped": "no join way"}
            groups = [g for g in s.scalars(select(GroupChat).where(
                GroupChat.store_code == code, GroupChat.dismissed_at.is_(None))) if g.chat_id not in drop]
            current = [c for c in st.join_way_chat_ids or [] if c not in drop]
            name, config_id = st.name, st.join_way_config_id
        chats = pick_join_chats(groups, current)
        if not chats:
            # WeCom takes 1-5 groups: the store's QR keeps the gone one until a clerk makes a new group
            # (the QR check reports it as gone/full meanwhile).
            log.warning("join way of %s: no group left to put behind it", code)
            return {"skipped": "no group left"}
        client.join_way.update_join_way(config_id, chat_ids=chats, state=code, room_base_name=name, remark=code)
        return {"chat_ids": chats}

    def decide(err: WeComError, row: Outbox, now: datetime) -> Outcome:
        if err.errcode in CONFIG_GONE:   # deleted at WeCom: sync / the QR check recreate it
            return Outcome("done", err.errcode, err.errmsg, result={"skipped": "join way gone"})
        return default_decide(err, row, now)

    def settle(s: Session, row: Outbox, outcome: Outcome, now: datetime) -> None:
        chats = outcome.result.get("chat_ids") if outcome.status == "done" else None
        if chats:
            st = s.get(Store, row.payload["store_code"])
            st.join_way_chat_ids = chats

    return Executor(REPAIR_KIND, send, decide, settle)   # update_join_way overwrites: idempotent


SYNC_STORE_KIND = "sync_store"


def sync_store_executor(sessions: sessionmaker[Session], provisioner_for) -> Executor:
    """`sync` for one store, queued by the ops console (bot.admin.actions) so the request does not wait
    on WeCom: Provisioner.sync_store, which reads and compares before it writes (a re-run changes
    nothing), so a repeat is harmless. Its errors stay in the row's result, as `sync` prints them.
    The store as the database has it, as the QR check's repair does: its clerks are the last full
    sync's, after the staff step, so a departed clerk never comes back onto the QR (config edits reach
    WeCom through `wecom-bot sync`)."""
    def send(client: WeComClient, row: Outbox) -> dict:
        with reads_of(sessions)() as s:
            st = s.get(Store, row.payload["store_code"])
        if st is None or st.closed_at is not None or not st.clerks:
            return {"skipped": "store not open or without a clerk"}
        result = provisioner_for(client).sync_store(store_config(st))   # with the container's hooks
        return {"changes": result.changes, "error": result.error, "groups": result.groups}

    return Executor(SYNC_STORE_KIND, send)


EXECUTORS = {REPAIR_KIND: join_way_repair_executor, SYNC_STORE_KIND: sync_store_executor}
