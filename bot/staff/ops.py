"""What only ops can fix (a store with no clerk, refused or failed transfers, ambiguous groups, a
clerk in no store) goes to the WeCom members of `ops_userids`: one batched app message per run,
never one per event.

A run passes its own `key` (a sync, a handover follow-up pass, a time bucket for callbacks). Lines
told under a key whose message has not gone out yet are appended to it, so events that arrive
together (a bulk staff deletion is many delete_user callbacks) become one message; once it went
out, a later call with that key starts a continuation row.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.clock import Clock
from bot.db.models import Outbox
from bot.messaging.outbox import OutboxRepo
from bot.text import APP_TEXT_MAX_BYTES, fit_lines

log = logging.getLogger(__name__)

KIND = "app_message"
HEAD = "【需要运营处理】"
FOOTER = "（企微社群机器人，每轮只发一条汇总）"
BATCH_SECONDS = 60     # callbacks told within this are sent together


def _recipients(settings_or_ops) -> list[str]:
    ops = getattr(settings_or_ops, "ops_userids", settings_or_ops)
    return sorted({u for u in (ops or []) if u})


def batch_key(prefix: str, now: datetime, minutes: int = 10) -> str:
    """A key for one time bucket: what callbacks tell within it goes out as one message."""
    bucket = now.replace(second=0, microsecond=0, minute=now.minute - now.minute % minutes)
    return f"{prefix}:{bucket:%Y%m%dT%H%M}"


def _payload(touser: list[str], lines: list[str], head: str) -> dict:
    text = fit_lines(head, lines, FOOTER, APP_TEXT_MAX_BYTES)
    return {"touser": touser, "msgtype": "text", "content": {"content": text}, "lines": lines, "head": head}


def tell_ops(session: Session, clock: Clock, settings_or_ops_userids, lines: Sequence[str], key: str, *,
             head: str = HEAD, delay_seconds: float = 0) -> bool:
    """Queue (or extend) the one ops message of run `key` in the caller's transaction.

    `lines` are Chinese, one per problem. With `delay_seconds` the message waits that long for more
    lines under the same key. Returns False when there is nothing to say or nobody to tell (logged:
    ops_userids is empty)."""
    lines = [ln for ln in lines if ln]
    if not lines:
        return False
    touser = _recipients(settings_or_ops_userids)
    if not touser:
        log.warning("ops_userids is empty: not told to anyone (%s): %s", key, " | ".join(lines))
        return False
    base = f"ops:{key}"[:150]
    n, tries = 0, 0
    while n < 100 and tries < 200:
        tries += 1
        row_key = base if n == 0 else f"{base}:{n}"
        # The row is locked while lines are appended: a worker claiming it waits (PostgreSQL) or the
        # write lock orders the two (SQLite), so no line is lost between the read and the write.
        row = session.scalars(select(Outbox).where(Outbox.key == row_key).with_for_update()
                              .execution_options(populate_existing=True)).first()
        if row is None:
            not_before = clock.now() + timedelta(seconds=delay_seconds) if delay_seconds else None
            if OutboxRepo(session, clock).add(KIND, row_key, _payload(touser, list(lines), head),
                                              not_before=not_before):
                log.info("ops told (%s): %d lines", row_key, len(lines))
                return True
            continue   # another transaction added it just now: look at it again
        n += 1
        if row.status == "pending" and not row.uncertain and row.payload.get("lines") is not None:
            old = list(row.payload["lines"])
            new = old + [ln for ln in lines if ln not in old]
            if new != old:
                row.payload = _payload(sorted(set(row.payload["touser"]) | set(touser)), new,
                                       row.payload.get("head", head))
            return True
    log.error("ops message %s: too many continuation rows; not told: %s", key, " | ".join(lines))
    return False
