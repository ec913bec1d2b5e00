"""The one outbound channel to WeCom members (clerks, ops): app messages through `message/send`.
Every domain queues them (command replies, QR alerts, chain notices, slot reminders) as outbox rows
of kind `app_message` with a payload from bot.text.app_text (or a textcard).

WeCom's rules, and what the bot does about them (bot.wecom.api.message has the sources):
- The duplicate check drops a request with the same JSON inside the interval. It is on, for a
  resend of the same row after a lost answer; a *new* message that would be identical to one the
  member got inside the interval (a clerk asking 帮助 twice) carries the time it was asked, so it is
  not dropped.
- More than 30 a minute or 1,000 an hour to one member are dropped silently: the bot counts what
  WeCom accepted per member (`member_message`, shared by all processes) and holds a message back
  until there is room, rather than lose it.
- `invaliduser` (partial failure) and 81013 (nobody valid) are kept in the row's result / errcode.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, true
from sqlalchemy.orm import Session, sessionmaker

from bot.db.engine import reads_of
from bot.db.models import MemberMessage, Outbox
from bot.messaging.outbox import Executor, Outcome, default_decide
from bot.text import truncate_utf8, APP_TEXT_MAX_BYTES
from bot.wecom import errcodes
from bot.wecom.api.message import DUPLICATE_CHECK_SECONDS, PER_MEMBER_HOUR, PER_MEMBER_MINUTE
from bot.wecom.client import WeComClient, WeComError

log = logging.getLogger(__name__)

KIND = "app_message"


def digest(msgtype: str, content: dict) -> str:
    return hashlib.sha256(json.dumps([msgtype, content], sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def _asked_at(content: dict, msgtype: str, at: str) -> dict:
    """The same message, told apart from the earlier one by the time it was asked."""
    mark = f"\n（{at}）"
    if msgtype in ("text", "markdown"):
        return {**content, "content": truncate_utf8(content.get("content", ""), APP_TEXT_MAX_BYTES - len(mark.encode())) + mark}
    if msgtype == "textcard":
        return {**content, "description": content.get("description", "") + mark}
    return content


class AppMessages:
    """Sends one app_message-shaped row (also the broadcast's slot reminders) within WeCom's rules."""

    def __init__(self, sessions: sessionmaker[Session]):
        self.sessions = sessions
        self.reads = reads_of(sessions)
        # Sent by this process and not yet in member_message: a batch settles after all its calls.
        self._lock = threading.Lock()
        self._unsettled: dict[int, tuple[list[str], datetime, str]] = {}   # row id → (to, sent at, digest)

    def _room(self, s: Session, users: list[str], now: datetime, reserved: int | None = None) -> float:
        """Seconds until every recipient has room under both per-member limits (0: now). With a
        reservation, the rows before it and itself count: one ahead of it leaves it its place."""
        wait = 0.0
        with self._lock:
            self._unsettled = {k: v for k, v in self._unsettled.items() if v[1] > now - timedelta(hours=1)}
            in_flight = [(u, at) for to, at, _ in self._unsettled.values() for u in to if u in users]
        for window, limit in ((timedelta(minutes=1), PER_MEMBER_MINUTE), (timedelta(hours=1), PER_MEMBER_HOUR)):
            where = [MemberMessage.userid.in_(users), MemberMessage.sent_at > now - window]
            if reserved is not None:
                where.append(MemberMessage.id < reserved)   # those before it; it takes the next place
            rows = s.execute(select(MemberMessage.userid, func.count(), func.min(MemberMessage.sent_at))
                             .where(*where).group_by(MemberMessage.userid)).all()
            seen = {u: [n, oldest] for u, n, oldest in rows}
            for u, at in in_flight:
                if at > now - window:
                    seen.setdefault(u, [0, at])[0] += 1
                    seen[u][1] = min(seen[u][1], at)
            for n, oldest in seen.values():
                if n >= limit:   # the oldest one leaving the window frees a place (approximately)
                    wait = max(wait, (oldest + window - now).total_seconds() + 1)
        return wait

    def _reserve(self, row: Outbox, now: datetime) -> int:
        """A reply or alert (kind app_message) is written to member_message before it is sent, in a
        transaction of its own, so every process sees it at once: the repeat rule and the limits hold
        across processes. The lowest id among the member's rows decides who came first. Returns the
        reservation's first id (a retry of the row keeps its reservation)."""
        p = row.payload
        with self.sessions.begin() as s:
            mine = s.scalar(select(func.min(MemberMessage.id)).where(MemberMessage.outbox_id == row.id))
            if mine is None:
                rows = [MemberMessage(userid=u, sent_at=now, digest=digest(p["msgtype"], p["content"]),
                                      outbox_id=row.id) for u in p["touser"]]
                s.add_all(rows)
                s.flush()
                mine = min(r.id for r in rows)
        return mine

    def _unreserve(self, row: Outbox, users: list[str] | None = None) -> None:
        with self.sessions.begin() as s:
            q = delete(MemberMessage).where(MemberMessage.outbox_id == row.id)
            if users is not None:
                q = q.where(MemberMessage.userid.in_(users))
            s.execute(q)

    def body(self, s: Session, row: Outbox, now: datetime, reserved: int | None) -> tuple[str, dict]:
        p = row.payload
        msgtype, content = p["msgtype"], p["content"]
        since = now - timedelta(seconds=DUPLICATE_CHECK_SECONDS)
        d = digest(msgtype, content)
        with self._lock:   # sent from this process, not yet recorded (a batch settles after its calls)
            repeated = any(other != row.id and dg == d and set(to) & set(p["touser"])
                           for other, (to, _, dg) in self._unsettled.items())
        earlier = [MemberMessage.userid.in_(p["touser"]), MemberMessage.digest == d,
                   MemberMessage.sent_at > since, MemberMessage.outbox_id != row.id]
        if reserved is not None:
            earlier.append(MemberMessage.id < reserved)
        repeated = repeated or s.execute(select(MemberMessage.id).where(*earlier).limit(1)).first() is not None
        if repeated:
            # deterministic per row: a resend of this row is the same JSON, and WeCom drops that
            content = _asked_at(content, msgtype, f"{row.created_at.astimezone(now.tzinfo):%H:%M:%S}")
        return msgtype, content

    def send(self, client: WeComClient, row: Outbox) -> dict:
        p = row.payload
        now = client.clock.now()
        if row.uncertain and now - row.created_at > timedelta(seconds=DUPLICATE_CHECK_SECONDS - 60):
            # WeCom's duplicate check no longer covers a resend: it might reach the member twice
            raise WeComError(errcodes.UNKNOWN_OUTCOME, "answer lost and the duplicate check has lapsed", "message/send")
        # Replies and alerts are few and must not collide across processes; a slot's reminders are
        # thousands at once, one per clerk, and are counted when their batch settles.
        reserved = self._reserve(row, now) if row.kind == KIND else None
        with self.reads() as s:
            wait = self._room(s, p["touser"], now, reserved)
            if not wait:
                msgtype, content = self.body(s, row, now, reserved)
        if wait:   # held back, not sent: PACED is not an attempt
            if reserved is not None:
                self._unreserve(row)
            raise WeComError(errcodes.PACED, f"per-member message limit: room in {wait:.0f}s", "message/send",
                             retry_after=wait)
        res = client.app_message.send(agent_id=client.agent_id, touser=p["touser"], msgtype=msgtype, content=content)
        invalid = [u for u in (res.get("invaliduser") or "").split("|") if u]
        if invalid:
            log.warning("app message %s: WeCom refused %s (invaliduser)", row.key, invalid)
        to = [u for u in p["touser"] if u not in invalid]
        if reserved is None:   # a reserved one is in member_message already
            with self._lock:
                self._unsettled[row.id] = (to, now, digest(p["msgtype"], p["content"]))
        return {"msgid": res.get("msgid"), "invaliduser": invalid, "digest": digest(p["msgtype"], p["content"]),
                "to": to}

    def decide(self, err: WeComError, row: Outbox, now: datetime) -> Outcome:
        if err.errcode == errcodes.UNKNOWN_OUTCOME:
            return Outcome("dead", err.errcode, err.errmsg)
        return default_decide(err, row, now)

    def record(self, s: Session, row: Outbox, outcome: Outcome, now: datetime) -> None:
        """What WeCom accepted, per member: the limits and the repeat rule count these."""
        with self._lock:
            self._unsettled.pop(row.id, None)
        if row.kind == KIND:   # reserved before sending: keep what WeCom accepted, drop the rest
            keep = outcome.result.get("to", []) if outcome.status == "done" else []
            s.execute(delete(MemberMessage).where(MemberMessage.outbox_id == row.id,
                                                  MemberMessage.userid.not_in(keep) if keep else true()))
            return
        if outcome.status == "done" and outcome.result.get("digest"):
            s.add_all([MemberMessage(userid=u, sent_at=now, digest=outcome.result["digest"], outbox_id=row.id)
                       for u in outcome.result.get("to", [])])


def app_message_executor(app_messages: AppMessages) -> Executor:
    m = app_messages
    return Executor(KIND, m.send, m.decide, m.record)


EXECUTORS = {KIND: app_message_executor}
