"""The broadcast's WeCom calls, as outbox executors: the mass message (add_msg_template) per owner,
the reminder (an app textcard opening the sidebar) per clerk, and the follow-ups remind and cancel."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from bot.calendar.calendar import ContentCalendar
from bot.db.models import BroadcastTask, Outbox, SlotDelivery
from bot.media import MediaLibrary, attachment_body, media_key
from bot.messaging.app_messages import send_app_message
from bot.messaging.outbox import Executor, Outcome, OutboxRepo, default_decide
from bot.wecom import errcodes
from bot.wecom.client import WeComClient, WeComError

log = logging.getLogger(__name__)

UNKNOWN_OUTCOME = (None, errcodes.NETWORK_ERROR, errcodes.HTTP_ERROR)  # the call may have reached WeCom


def _adopt_created(client: WeComClient, p: dict, since: datetime) -> str | None:
    """After a crash or timeout the template may exist already: find ours by sender and text."""
    res = client.groupmsg.get_groupmsg_list_v2(chat_type="group", start_time=int(since.timestamp()) - 60,
                                               end_time=int(since.timestamp()) + 86400, creator=p["sender"],
                                               filter_type=0)
    for m in res.get("group_msg_list", []):
        if (m.get("text") or {}).get("content") == p["text"]:
            return m["msgid"]
    return None


# Nothing of these tables is loaded in a settle's session: the ORM need not evaluate each UPDATE
# against it (a tenth of a busy slot's CPU went there).
UNSYNCED = {"synchronize_session": False}


def mass_executor(media: MediaLibrary, calendar: ContentCalendar) -> Executor:
    def send(client: WeComClient, row: Outbox) -> dict:
        p = row.payload
        if row.attempts > 1 and row.last_errcode in UNKNOWN_OUTCOME:
            if msgid := _adopt_created(client, p, row.created_at):
                log.info("mass message %s already created before (%s): adopted", row.key, msgid)
                return {"msgid": msgid, "fail_list": []}
        body = {"chat_type": "group", "sender": p["sender"], "chat_id_list": p["chat_ids"], "allow_select": False,
                "text": {"content": p["text"]},
                "attachments": [attachment_body(a, media, calendar) for a in p.get("attachments", [])]}
        return client.external_contact.add_msg_template(body)

    def decide(err: WeComError, row: Outbox, now: datetime) -> Outcome:
        if err.errcode == errcodes.INVALID_MEDIA_ID:  # expired or unknown media: upload again, then retry
            for a in row.payload.get("attachments", []):
                (kind, value), = a.items()
                rel = value if isinstance(value, str) else value.get("pic")
                if rel:
                    media.forget(media_key(rel))
            return Outcome("retry", err.errcode, err.errmsg, retry_in=1)
        return default_decide(err, row, now)

    def settle(s: Session, row: Outbox, outcome: Outcome, now: datetime) -> None:
        p = row.payload
        where = (SlotDelivery.day == p["day"], SlotDelivery.slot == p["slot"], SlotDelivery.owner == p["sender"],
                 SlotDelivery.mode == "mass", SlotDelivery.status == "queued")
        task = (BroadcastTask.day == p["day"], BroadcastTask.slot == p["slot"], BroadcastTask.sender == p["sender"])
        if outcome.status == "done":
            msgid = outcome.result["msgid"]
            failed = [str(c) for c in outcome.result.get("fail_list") or []]
            s.execute(update(BroadcastTask).where(*task).values(msgid=msgid, status="awaiting")
                      .execution_options(**UNSYNCED))
            s.execute(update(SlotDelivery).where(*where, SlotDelivery.chat_id.in_(p["chat_ids"]))
                      .values(status="awaiting", msgid=msgid).execution_options(**UNSYNCED))
            if failed:
                s.execute(update(SlotDelivery).where(SlotDelivery.msgid == msgid, SlotDelivery.chat_id.in_(failed))
                          .values(status="failed", reason="企业微信不能向这个群群发（fail_list）"))
            return
        # The mass message could not be created: the slot still reaches the groups, by reminder.
        reason = f"群发创建失败（{outcome.errcode or outcome.status}），已改为提醒群主"
        s.execute(update(BroadcastTask).where(*task).values(status="failed", finished_at=now)
                  .execution_options(**UNSYNCED))
        moved = s.execute(update(SlotDelivery).where(*where).values(mode="reminder", reason=reason)
                          .returning(SlotDelivery.id)).all()
        if moved and p.get("fallback"):
            OutboxRepo(s, _Fixed(now)).add("slot_reminder", f"rm2:{p['day']}:{p['slot']}:{p['sender']}", p["fallback"])

    return Executor("add_msg_template", send, decide, settle)


class _Fixed:
    """A clock stopped at `now`, for an outbox row added while settling."""
    def __init__(self, now: datetime):
        self._now = now

    def now(self) -> datetime:
        return self._now


def reminder_executor() -> Executor:
    """One textcard per clerk and slot; the reminder groups move to `reminded`."""

    def settle(s: Session, row: Outbox, outcome: Outcome, now: datetime) -> None:
        p = row.payload
        values = (dict(status="reminded") if outcome.status == "done"
                  else dict(status="failed", reason=f"提醒没有发出（{outcome.errcode or outcome.status}）"))
        s.execute(update(SlotDelivery).where(
            SlotDelivery.day == p["day"], SlotDelivery.slot == p["slot"], SlotDelivery.owner == p["touser"][0],
            SlotDelivery.mode == "reminder", SlotDelivery.status == "queued").values(**values))

    return Executor("slot_reminder", send_app_message, None, settle)


def remind_executor() -> Executor:
    def send(client: WeComClient, row: Outbox) -> dict:
        client.groupmsg.remind_groupmsg_send(row.payload["msgid"])
        return {}

    def settle(s: Session, row: Outbox, outcome: Outcome, now: datetime) -> None:
        if outcome.status == "done":
            task = s.scalars(select(BroadcastTask).where(BroadcastTask.msgid == row.payload["msgid"])).first()
            if task:
                task.reminds = [*task.reminds, now.isoformat()]

    return Executor("remind_groupmsg_send", send, None, settle)


def cancel_executor() -> Executor:
    def send(client: WeComClient, row: Outbox) -> dict:
        client.groupmsg.cancel_groupmsg_send(row.payload["msgid"])
        return {}

    def settle(s: Session, row: Outbox, outcome: Outcome, now: datetime) -> None:
        if outcome.status != "done":
            return
        msgid = row.payload["msgid"]
        s.execute(update(BroadcastTask).where(BroadcastTask.msgid == msgid, BroadcastTask.status == "awaiting")
                  .values(status="cancelled", finished_at=now))
        s.execute(update(SlotDelivery).where(SlotDelivery.msgid == msgid, SlotDelivery.status == "awaiting")
                  .values(status="cancelled", reason="内容已过期，群主未确认，已取消群发"))

    return Executor("cancel_groupmsg_send", send, None, settle)


EXECUTORS = {"add_msg_template": mass_executor, "slot_reminder": reminder_executor,
             "remind_groupmsg_send": remind_executor, "cancel_groupmsg_send": cancel_executor}
