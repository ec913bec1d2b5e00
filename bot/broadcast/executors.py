"""The broadcast's WeCom calls, as outbox executors: the mass message (add_msg_template) per owner,
the reminder (an app textcard opening the sidebar) per clerk, and the follow-ups remind and cancel."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from bot.calendar.calendar import ContentCalendar
from bot.db.engine import reads_of
from bot.db.models import BroadcastTask, Outbox, SlotDelivery
from bot.media import MediaLibrary, attachment_body, media_key
from bot.messaging.app_messages import AppMessages
from bot.messaging.outbox import Executor, Outcome, OutboxRepo, default_decide
from bot.wecom import errcodes
from bot.wecom.client import WeComClient, WeComError

log = logging.getLogger(__name__)



def find_created(client: WeComClient, row: Outbox, taken: frozenset[str] = frozenset()) -> dict | None:
    """The mass message an uncertain row may have created already: by sender and text, among those
    the corp created (filter_type 0) since the row was queued (a minute of clock skew allowed, and
    an earlier slot's same text cannot match: it was created before this row existed). `taken`: msgids
    other tasks already hold (the same clerk's task for another store may carry the same text)."""
    p = row.payload
    start, end = int(row.created_at.timestamp()) - 60, int(client.clock.now().timestamp()) + 60
    cursor = None
    while True:
        res = client.groupmsg.get_groupmsg_list_v2(chat_type=p.get("chat_type", "group"), start_time=start, end_time=end,
                                                   creator=p["sender"], filter_type=0, cursor=cursor)
        for m in res.get("group_msg_list", []):
            if (m.get("text") or {}).get("content") == p["text"] and m["msgid"] not in taken \
                    and _same_targets(client, m["msgid"], p):
                log.info("mass message %s was created before its answer was lost (%s): adopted", row.key, m["msgid"])
                return {"msgid": m["msgid"], "fail_list": [], "adopted": True}
        cursor = res.get("next_cursor")
        if not cursor:
            return None


def _same_targets(client: WeComClient, msgid: str, p: dict) -> bool:
    """A group mass message's targets (get_groupmsg_send_result lists each with its status, sent or
    not) are among the row's groups: a clerk of two stores has one text in two tasks, told apart
    by their groups. A single-chat message (the recovery) is told apart by sender and text alone."""
    if not p.get("chat_ids"):
        return True
    chats, cursor = set(), None
    while True:
        res = client.groupmsg.get_groupmsg_send_result(msgid, p["sender"], cursor=cursor)
        chats |= {r["chat_id"] for r in res.get("send_list", []) if r.get("chat_id")}
        cursor = res.get("next_cursor")
        if not cursor:
            break
    return bool(chats) and chats <= set(p["chat_ids"])


# Nothing of these tables is loaded in a settle's session: the ORM need not evaluate each UPDATE
# against it (a tenth of a busy slot's CPU went there).
UNSYNCED = {"synchronize_session": False}


def mass_executor(media: MediaLibrary, calendar: ContentCalendar, sessions: sessionmaker[Session]) -> Executor:
    def send(client: WeComClient, row: Outbox) -> dict:
        p = row.payload
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
        # Per (sender, store): a clerk's task for one store never settles the other store's groups.
        # (Rows queued before tasks were per store carry no store_code: their task has "".)
        code = p.get("store_code")
        where = (SlotDelivery.day == p["day"], SlotDelivery.slot == p["slot"], SlotDelivery.owner == p["sender"],
                 SlotDelivery.mode == "mass", SlotDelivery.status == "queued",
                 *((SlotDelivery.store_code == code,) if code else ()))
        task = (BroadcastTask.day == p["day"], BroadcastTask.slot == p["slot"], BroadcastTask.sender == p["sender"],
                BroadcastTask.store_code == (code or ""))
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
        if outcome.errcode == errcodes.UNKNOWN_OUTCOME:
            # WeCom may hold the task and could not be asked: a reminder too could send the slot twice.
            # The clerk sees the task in 群发助手 if it exists; the row says so (`wecom-bot dead`).
            s.execute(update(BroadcastTask).where(*task).values(status="unknown", finished_at=now)
                      .execution_options(**UNSYNCED))
            s.execute(update(SlotDelivery).where(*where).values(
                status="failed", reason="群发是否已创建不确定（应答丢失），未改为提醒，请在企业微信群发助手核对"))
            return
        # The mass message could not be created: the slot still reaches the groups, by reminder.
        reason = f"群发创建失败（{outcome.errcode or outcome.status}），已改为提醒群主"
        s.execute(update(BroadcastTask).where(*task).values(status="failed", finished_at=now)
                  .execution_options(**UNSYNCED))
        moved = s.execute(update(SlotDelivery).where(*where).values(mode="reminder", reason=reason)
                          .returning(SlotDelivery.id)).all()
        if moved and p.get("fallback"):
            key = f"rm2:{p['day']}:{p['slot']}:{p['sender']}" + (f":{code}" if code else "")
            OutboxRepo(s, _Fixed(now)).add("slot_reminder", key, p["fallback"])

    def reconcile(client: WeComClient, row: Outbox) -> dict | None:
        p = row.payload
        with reads_of(sessions)() as s:
            taken = frozenset(s.scalars(select(BroadcastTask.msgid).where(
                BroadcastTask.day == p["day"], BroadcastTask.slot == p["slot"], BroadcastTask.sender == p["sender"],
                BroadcastTask.store_code != (p.get("store_code") or ""), BroadcastTask.msgid.is_not(None))))
        return find_created(client, row, taken)

    # A second add_msg_template is a second task for the clerk and maybe a second message in the group.
    return Executor("add_msg_template", send, decide, settle, idempotent=False, reconcile=reconcile)


class _Fixed:
    """A clock stopped at `now`, for an outbox row added while settling."""
    def __init__(self, now: datetime):
        self._now = now

    def now(self) -> datetime:
        return self._now


def reminder_executor(app_messages: AppMessages) -> Executor:
    """One textcard per clerk and slot (an app message); the reminder groups move to `reminded`."""
    messages = app_messages   # the same one app_message rows use: they see each other's in-flight sends

    def settle(s: Session, row: Outbox, outcome: Outcome, now: datetime) -> None:
        messages.record(s, row, outcome, now)
        p = row.payload
        values = (dict(status="reminded") if outcome.status == "done"
                  else dict(status="failed", reason=f"提醒没有发出（{outcome.errcode or outcome.status}）"))
        s.execute(update(SlotDelivery).where(
            SlotDelivery.day == p["day"], SlotDelivery.slot == p["slot"], SlotDelivery.owner == p["touser"][0],
            SlotDelivery.mode == "reminder", SlotDelivery.status == "queued").values(**values))

    return Executor("slot_reminder", messages.send, messages.decide, settle)


def remind_executor() -> Executor:
    def send(client: WeComClient, row: Outbox) -> dict:
        client.groupmsg.remind_groupmsg_send(row.payload["msgid"])
        return {}

    def assume_made(client: WeComClient, row: Outbox) -> dict:
        # WeCom tells nobody whether a reminder was made, and allows 3 per mass message a day: one
        # whose answer was lost counts as made (toward the 3) rather than nag the clerk twice.
        log.info("reminder %s: answer lost, counted as made and not repeated", row.key)
        return {"assumed": True}

    def settle(s: Session, row: Outbox, outcome: Outcome, now: datetime) -> None:
        if outcome.status == "done":
            task = s.scalars(select(BroadcastTask).where(BroadcastTask.msgid == row.payload["msgid"])).first()
            if task:
                task.reminds = [*task.reminds, now.isoformat()]

    return Executor("remind_groupmsg_send", send, None, settle, idempotent=False, reconcile=assume_made)


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
