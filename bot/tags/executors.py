"""The mark_tag outbox kind: resolve the tag's id (cached, else get_corp_tag_list, else add_corp_tag),
then externalcontact/mark_tag. Marking twice is harmless at WeCom: idempotent, retried blindly."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from bot.clock import Clock
from bot.db.models import Outbox
from bot.messaging.outbox import Executor, Outcome, default_decide
from bot.tags.corp_tags import CorpTags
from bot.tags.marks import KIND, RENAME
from bot.wecom import errcodes
from bot.wecom.client import WeComClient, WeComError

log = logging.getLogger(__name__)

# Nothing to tag any more: the relation is gone, or the ids are wrong. Done, not retried, not dead:
# a clerk who left takes every pending mark of their customers with them.
RELATION_GONE = frozenset({errcodes.NO_CONTACT_RELATION, errcodes.INVALID_EXTERNAL_USERID,
                           errcodes.INVALID_USERID, errcodes.USER_NOT_FOUND})
# WeCom will not take another tag (corp limit) or this name: ops must act; the row stays dead for `dead --retry`.
TAG_REFUSED = frozenset({errcodes.CORP_TAG_LIMIT, errcodes.TAG_NAME_LENGTH, errcodes.TAG_NAME_TAKEN})


def mark_tag_executor(sessions: sessionmaker[Session], clock: Clock) -> Executor:
    tags = CorpTags(sessions, clock)

    def send(client: WeComClient, row: Outbox) -> dict:
        p = row.payload
        tag_id = tags.ensure(client, p["group"], p["tag"])
        try:
            client.corp_tags.mark_tag(userid=p["userid"], external_userid=p["external_userid"], add_tag=[tag_id])
        except WeComError as e:
            if e.errcode != errcodes.INVALID_TAG_ID:
                raise
            # deleted at WeCom since it was cached: find it again (or make it again) and mark once more
            log.info("corp tag %s/%s (%s) is gone at WeCom: looking it up again", p["group"], p["tag"], tag_id)
            tags.forget(p["group"], p["tag"], tag_id)
            tag_id = tags.ensure(client, p["group"], p["tag"])
            client.corp_tags.mark_tag(userid=p["userid"], external_userid=p["external_userid"], add_tag=[tag_id])
        return {"tag_id": tag_id}

    def decide(err: WeComError, row: Outbox, now: datetime) -> Outcome:
        if err.errcode in RELATION_GONE:   # the customer left the clerk, or the clerk left: nothing to tag, no failure
            return Outcome("done", err.errcode, f"no relation to tag: {err.errmsg}",
                           result={"skipped": "no relation"})
        if err.errcode in TAG_REFUSED:
            log.warning("mark_tag %s: WeCom refuses the tag %s/%s (%s %s)", row.key, row.payload["group"],
                        row.payload["tag"], err.errcode, err.errmsg)
            return Outcome("dead", err.errcode, err.errmsg)
        if err.errcode == errcodes.INVALID_TAG_ID:   # gone again between the lookup and the mark: once more later
            return Outcome("retry", err.errcode, err.errmsg, retry_in=min(300.0, 2.0 ** row.attempts))
        return default_decide(err, row, now)

    return Executor(KIND, send, decide, None, idempotent=True)


def rename_executor(sessions: sessionmaker[Session], clock: Clock) -> Executor:
    """A renamed store's tag follows it; renaming twice to one name is one name: retried blindly."""
    tags = CorpTags(sessions, clock)

    def send(client: WeComClient, row: Outbox) -> dict:
        p = row.payload
        return tags.rename(client, p["group"], p["old"], p["new"])

    def decide(err: WeComError, row: Outbox, now: datetime) -> Outcome:
        if err.errcode in TAG_REFUSED or err.errcode == errcodes.NOT_OWN_TAG:
            log.warning("rename_corp_tag %s: WeCom refuses (%s %s); new adds get a tag of the new name",
                        row.key, err.errcode, err.errmsg)
            return Outcome("dead", err.errcode, err.errmsg)
        return default_decide(err, row, now)

    return Executor(RENAME, send, decide, None, idempotent=True)


EXECUTORS = {KIND: mark_tag_executor, RENAME: rename_executor}
