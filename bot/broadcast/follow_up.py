"""After the slot: read what WeCom did with each mass message, nudge owners who have not confirmed,
cancel what expired, and learn of the clerks' own mass sends (they use up the same receive cap)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from datetime import datetime, timedelta, timezone

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from bot.clock import Clock
from bot.config import BroadcastSettings
from bot.db.engine import reads_of
from bot.db.models import BroadcastTask, GroupMsgSeen, GroupReceipt, SlotDelivery
from bot.messaging.outbox import OutboxRepo, insert_ignore_many
from bot.wecom.client import WeComClient, WeComError

log = logging.getLogger(__name__)

REMINDS_PER_DAY = 3                 # remind_groupmsg_send: at most 3 per broadcast in 24 h
FOLLOW_FOR = timedelta(days=3)      # after that an unconfirmed task is left alone
FAILED_REASON = {2: "发送失败：不是客户群或群已解散", 3: "该群本期已收到其他群发（接收上限），未送达"}


@dataclass
class FollowUpReport:
    checked: int = 0
    confirmed: int = 0
    delivered: int = 0
    failed: int = 0
    reminded: int = 0
    cancelled: int = 0
    personal: int = 0

    def add(self, other: FollowUpReport) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))



def _pages(call, key: str, **kw) -> list[dict]:
    out, cursor = [], None
    while True:
        res = call(**kw, cursor=cursor) if cursor else call(**kw)
        out += res.get(key, [])
        cursor = res.get("next_cursor")
        if not cursor:
            return out


class FollowUp:
    """Every 5 minutes: `concurrency` tasks at a time (a chain's day is thousands of awaiting tasks,
    each one or more WeCom calls), each in its own transactions; one task's failure is logged and
    the others go on."""

    def __init__(self, sessions: sessionmaker[Session], client: WeComClient, clock: Clock,
                 settings: BroadcastSettings, concurrency: int = 8):
        self.sessions = sessions
        self.reads = reads_of(sessions)
        self.client = client
        self.clock = clock
        self.settings = settings
        self.concurrency = max(1, concurrency)

    def _each(self, fn: Callable, items: list) -> Iterator:
        if self.concurrency == 1 or len(items) <= 1:
            yield from map(fn, items)
            return
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="follow-up") as pool:
            yield from pool.map(fn, items)

    def run(self) -> FollowUpReport:
        report = FollowUpReport()
        now = self.clock.now()
        with self.reads() as r:
            tasks = list(r.scalars(select(BroadcastTask).where(BroadcastTask.status == "awaiting",
                                                               BroadcastTask.created_at >= now - FOLLOW_FOR)))

        def one(t: BroadcastTask) -> FollowUpReport:
            part = FollowUpReport(checked=1)
            try:
                self._follow(t, now, part)
            except WeComError as e:
                log.warning("follow-up of %s (%s %s %s) failed: %s", t.msgid, t.day, t.slot, t.sender, e)
            except Exception:   # noqa: BLE001 — a bug or a database error at one task must not end the pass
                log.exception("follow-up of %s (%s %s %s) failed", t.msgid, t.day, t.slot, t.sender)
            return part

        for part in self._each(one, tasks):
            report.add(part)
        try:
            report.personal = self.sync_personal_sends(now)
        except WeComError as e:
            log.warning("clerks' own mass sends not synced: %s", e)
        except Exception:   # noqa: BLE001 — the tasks' results above are kept
            log.exception("clerks' own mass sends not synced")
        return report

    def _follow(self, t: BroadcastTask, now: datetime, report: FollowUpReport) -> None:
        tasks = _pages(self.client.groupmsg.get_groupmsg_task, "task_list", msgid=t.msgid)
        confirmed = any(x.get("userid") == t.sender and int(x.get("status", 0)) == 2 for x in tasks)
        if confirmed:
            report.confirmed += 1
            sends = _pages(self.client.groupmsg.get_groupmsg_send_result, "send_list", msgid=t.msgid, userid=t.sender)
            delivered, failed, waiting = self._apply_results(t.msgid, sends, now, source="bot")
            report.delivered += delivered
            report.failed += failed
            if not waiting:
                with self.sessions.begin() as s:
                    s.execute(update(BroadcastTask).where(BroadcastTask.id == t.id)
                              .values(status="sent", synced_at=now, finished_at=now))
            return
        with self.sessions.begin() as s:
            outbox = OutboxRepo(s, self.clock)
            s.execute(update(BroadcastTask).where(BroadcastTask.id == t.id).values(synced_at=now))
            if t.expires_at and now >= t.expires_at:
                if outbox.add("cancel_groupmsg_send", f"cancel:{t.msgid}", {"msgid": t.msgid}):
                    report.cancelled += 1
                return
            reminds = [datetime.fromisoformat(x) for x in t.reminds]
            recent = [x for x in reminds if x > now - timedelta(hours=24)]
            wait = timedelta(minutes=self.settings.remind_after_minutes)
            last = max(reminds, default=t.created_at)
            if len(recent) < REMINDS_PER_DAY and now - last >= wait:
                if outbox.add("remind_groupmsg_send", f"remind:{t.msgid}:{len(reminds)}", {"msgid": t.msgid}):
                    report.reminded += 1

    def _apply_results(self, msgid: str, sends: list[dict], now: datetime, source: str) -> tuple[int, int, int]:
        delivered = failed = waiting = 0
        receipts, by_status = [], {}
        for row in sends:
            chat_id, status = row.get("chat_id"), int(row.get("status", 0))
            if not chat_id:
                continue
            if status == 1:
                sent_at = datetime.fromtimestamp(int(row.get("send_time") or now.timestamp()), timezone.utc)
                receipts.append(dict(chat_id=chat_id, msgid=msgid, sent_at=sent_at, source=source))
                by_status.setdefault(1, []).append((chat_id, sent_at))
                delivered += 1
            elif status in FAILED_REASON:
                by_status.setdefault(status, []).append((chat_id, None))
                failed += 1
            else:
                waiting += 1
        with self.sessions.begin() as s:
            insert_ignore_many(s, GroupReceipt, receipts)
            if source == "bot":
                for chat_id, sent_at in by_status.get(1, []):
                    s.execute(update(SlotDelivery).where(SlotDelivery.msgid == msgid, SlotDelivery.chat_id == chat_id,
                                                         SlotDelivery.status == "awaiting")
                              .values(status="sent", sent_at=sent_at))
                for status in (2, 3):
                    chats = [c for c, _ in by_status.get(status, [])]
                    if chats:
                        s.execute(update(SlotDelivery).where(SlotDelivery.msgid == msgid,
                                                             SlotDelivery.chat_id.in_(chats),
                                                             SlotDelivery.status == "awaiting")
                                  .values(status="failed", reason=FAILED_REASON[status]))
        return delivered, failed, waiting

    def sync_personal_sends(self, now: datetime) -> int:
        """The clerks' own mass messages to groups (create_type 1): record which groups received them."""
        with self.reads() as r:
            latest = r.scalar(select(func.max(GroupMsgSeen.create_time)))
            pending = list(r.scalars(select(GroupMsgSeen).where(GroupMsgSeen.settled.is_(False))))
        # get_groupmsg_list_v2 spans at most a month: the month's cap needs no more.
        start = (latest - timedelta(hours=1)) if latest else now - timedelta(days=30)
        found = _pages(self.client.groupmsg.get_groupmsg_list_v2, "group_msg_list", chat_type="group",
                       start_time=int(start.timestamp()), end_time=int(now.timestamp()), filter_type=1)
        new = [dict(msgid=m["msgid"], creator=m["creator"], settled=False,
                    create_time=datetime.fromtimestamp(int(m["create_time"]), timezone.utc))
               for m in found if int(m.get("create_type", 1)) == 1]
        with self.sessions.begin() as s:
            insert_ignore_many(s, GroupMsgSeen, new)
        known = {p.msgid for p in pending}
        todo = pending + [GroupMsgSeen(**n) for n in new if n["msgid"] not in known]

        def one(m: GroupMsgSeen) -> None:
            try:
                self._settle_personal(m, now)
            except WeComError as e:   # left unsettled: the next pass reads it again
                log.warning("clerk's own mass send %s (%s) not read: %s", m.msgid, m.creator, e)
            except Exception:   # noqa: BLE001 — one message must not keep the others unread
                log.exception("clerk's own mass send %s (%s) not read", m.msgid, m.creator)

        for _ in self._each(one, todo):
            pass
        return len(new)

    def _settle_personal(self, m: GroupMsgSeen, now: datetime) -> None:
        tasks = _pages(self.client.groupmsg.get_groupmsg_task, "task_list", msgid=m.msgid)
        all_sent = bool(tasks)
        for task in tasks:
            if int(task.get("status", 0)) != 2:
                all_sent = False
                continue
            sends = _pages(self.client.groupmsg.get_groupmsg_send_result, "send_list", msgid=m.msgid,
                           userid=task["userid"])
            self._apply_results(m.msgid, sends, now, source="personal")
        create_time = m.create_time if m.create_time.tzinfo else m.create_time.replace(tzinfo=timezone.utc)
        if all_sent or now - create_time > timedelta(days=1):
            with self.sessions.begin() as s:
                s.execute(update(GroupMsgSeen).where(GroupMsgSeen.msgid == m.msgid).values(settled=True))
