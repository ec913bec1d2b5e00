"""The groupchat_get outbox kind: read a group after a membership callback, wait out WeCom's lag
(the member list can trail the callback), then attribute the joins."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from bot.db.models import Outbox
from bot.funnel.facts import apply_member_list
from bot.funnel.findings import QrHealth
from bot.messaging.outbox import Executor, Outcome, default_decide
from bot.wecom import errcodes
from bot.wecom.client import WeComClient, WeComError

LAG_RETRIES = 6          # × LAG_STEP seconds: past this, reconcile with what WeCom shows
LAG_STEP = 2.0


def groupchat_get_executor(qr_health: QrHealth) -> Executor:
    on_joins = qr_health.on_joins
    def send(client: WeComClient, row: Outbox) -> dict:
        group = client.external_contact_group_chat.get(row.payload["chat_id"])
        present = {m["userid"] for m in group.get("member_list", [])}
        missing = [m for m in row.payload.get("member_ids", []) if m not in present]
        if missing and row.attempts <= LAG_RETRIES:
            raise WeComError(errcodes.DATA_LAG, f"{len(missing)} new member(s) not yet in groupchat/get",
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
        joins = apply_member_list(s, group, now, set(row.payload.get("member_ids", [])))
        outcome.result.update(members=len(group.get("member_list", [])), joins=len(joins))
        on_joins(s, joins, now)

    return Executor("groupchat_get", send, decide, settle)


EXECUTORS = {"groupchat_get": groupchat_get_executor}
