"""The groupchat_get outbox kind: read a group after a membership callback, wait out WeCom's lag
(the member list can trail the callback), then attribute the joins."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy.orm import Session

from bot.db.models import GroupChat, Outbox
from bot.funnel.facts import apply_member_list
from bot.funnel.findings import QrHealth
from bot.broadcast.executors import find_created
from bot.funnel.recovery import KIND as RECOVERY_KIND
from bot.media import MediaLibrary
from bot.messaging.outbox import Executor, Outcome, default_decide
from bot.welcome.executors import ensure_group_qr_media
from bot.provisioning.groups import tell_ops_unassigned, unassigned
from bot.staff.ops import BATCH_SECONDS, batch_key
from bot.tags.marks import mark_joined
from bot.wecom import errcodes
from bot.wecom.client import WeComClient, WeComError

log = logging.getLogger(__name__)

LAG_RETRIES = 6          # × LAG_STEP seconds: past this, reconcile with what WeCom shows
LAG_STEP = 2.0


def groupchat_get_executor(qr_health: QrHealth, settings) -> Executor:
    on_joins = qr_health.on_joins
    def send(client: WeComClient, row: Outbox) -> dict:
        # need_name: the members' names, kept for the churn list (bot.funnel.churn), shown masked
        group = client.external_contact_group_chat.get(row.payload["chat_id"], need_name=True)
        present = {m["userid"] for m in group.get("member_list", [])}
        missing = [m for m in row.payload.get("member_ids", []) if m not in present]
        if missing and row.attempts <= LAG_RETRIES:
            raise WeComError(errcodes.DATA_LAG, f"{len(missing)} new member(s) not yet in groupchat/get",
                             "externalcontact/groupchat/get")
        old_owner = row.payload.get("old_owner")
        if old_owner and group.get("owner") == old_owner and row.attempts <= LAG_RETRIES:   # change_owner
            raise WeComError(errcodes.DATA_LAG, "groupchat/get still shows the old owner",
                             "externalcontact/groupchat/get")
        return {"group": group, "missing": missing}

    def decide(err: WeComError, row: Outbox, now: datetime) -> Outcome:
        if err.errcode == errcodes.DATA_LAG:
            return Outcome("retry", err.errcode, err.errmsg, retry_in=LAG_STEP)
        if err.errcode in (errcodes.INVALID_CHAT_ID, errcodes.NOT_CUSTOMER_GROUP):
            return Outcome("dead", err.errcode, err.errmsg)
        return default_decide(err, row, now)

    def settle(s: Session, row: Outbox, outcome: Outcome, now: datetime) -> None:
        if outcome.status != "done":
            return
        group = outcome.result.pop("group")
        before = s.get(GroupChat, group["chat_id"])
        before = (before.owner, before.store_code) if before else None
        joins = apply_member_list(s, group, now, set(row.payload.get("member_ids", [])))
        outcome.result.update(members=len(group.get("member_list", [])), joins=len(joins))
        on_joins(s, joins, now)
        mark_joined(s, now, settings.tags, joins)   # 已进群 at WeCom (bot.tags)
        after = s.get(GroupChat, group["chat_id"])
        if after.store_code == "" and before != (after.owner, ""):   # newly without a store: ops decide
            tell_ops_unassigned(s, now, settings.ops_userids, unassigned(s, [after.chat_id]),
                                batch_key("groups", now), delay_seconds=BATCH_SECONDS)

    return Executor("groupchat_get", send, decide, settle)


def recovery_executor(media: MediaLibrary) -> Executor:
    """The stranded customers' invitation (bot.funnel.recovery): a single-chat mass message from the
    clerk they added, with the store's group QR as it is now at WeCom."""
    def send(client: WeComClient, row: Outbox) -> dict:
        p = row.payload
        attachments = []
        way = client.join_way.get_join_way(p["join_way_config_id"]) if p.get("join_way_config_id") else {}
        if way.get("qr_code"):
            attachments.append({"msgtype": "image", "image": {
                "media_id": ensure_group_qr_media(media, client, p["store_code"], way["qr_code"])}})
        res = client.external_contact.add_msg_template({
            "chat_type": "single", "sender": p["sender"], "external_userid": p["external_userids"],
            "text": {"content": p["text"]}, "attachments": attachments})
        if res.get("fail_list"):
            log.info("recovery %s: WeCom cannot send to %d of them (fail_list)", row.key, len(res["fail_list"]))
        return {"msgid": res.get("msgid"), "fail_list": res.get("fail_list") or []}

    # A second add_msg_template is a second invitation for the clerk to confirm.
    return Executor(RECOVERY_KIND, send, None, None, idempotent=False, reconcile=find_created)


EXECUTORS = {"groupchat_get": groupchat_get_executor, RECOVERY_KIND: recovery_executor}
