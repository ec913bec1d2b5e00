"""The send_welcome_msg executor: attachments resolved at send time (media_ids expire), errcodes
settled per shared/wecom-facts.md §3: 41051 done, 41096 retry inside the window, 41050 expired."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from bot.db.engine import reads_of
from bot.db.models import Outbox, Store, Welcome
from bot.media import MediaLibrary, attachment_body, media_key
from bot.messaging.outbox import Executor, Outcome, default_decide
from bot.welcome.content import ContentError, WelcomeContent
from bot.wecom import errcodes
from bot.wecom.client import WeComClient, WeComError

log = logging.getLogger(__name__)


def group_qr_media_key(store_code: str) -> str:
    return f"group_qr:{store_code}"


def ensure_group_qr_media(media: MediaLibrary, client: WeComClient, store_code: str, qr_url: str) -> str:
    return media.ensure(group_qr_media_key(store_code), qr_url, lambda: client.fetch_url(qr_url),
                        filename=f"{store_code}-group-qr.png")


def welcome_executor(sessions: sessionmaker[Session], media: MediaLibrary, welcome_content: WelcomeContent) -> Executor:
    content = welcome_content
    reads = reads_of(sessions)

    def send(client: WeComClient, row: Outbox) -> dict:
        p = row.payload
        attachments, notes, qr_attached = [], [], False
        if p.get("attach_group_qr"):
            with reads() as s:
                store = s.get(Store, p["store_code"])
                qr_url = store.join_way_qr_code if store else None
            if not qr_url:
                notes.append("no_join_way")
            else:
                try:
                    media_id = ensure_group_qr_media(media, client, p["store_code"], qr_url)
                    attachments.append({"msgtype": "image", "image": {"media_id": media_id}})
                    qr_attached = True
                except WeComError as e:
                    # The text still goes out inside the window; the QR's absence is recorded.
                    log.warning("welcome %s: group QR not attached (%s)", row.key, e)
                    notes.append("qr_upload_failed")
        if p.get("page_link"):   # right after the QR image: 「点此进群（二维码打不开点这里）」
            attachments.append(p["page_link"])
        for extra in p.get("attachments", []):
            # Every kind the schema takes (image, video, file, link, miniprogram), as the broadcast sends
            # them. One that cannot be read or uploaded is left out: the text and the group QR still go
            # inside the 20 s, and the row says what was dropped.
            try:
                attachments.append(attachment_body(extra, media, content))
            except (OSError, ContentError, ValueError, KeyError, WeComError) as e:
                log.warning("welcome %s: attachment %s left out (%s)", row.key, extra, e)
                notes.append("attachment_left_out")
        client.external_contact.send_welcome_msg(
            {"welcome_code": p["welcome_code"], "text": {"content": p["text"]}, "attachments": attachments[:9]})
        return {"qr_attached": qr_attached, "attachments": len(attachments), "notes": notes}

    def decide(err: WeComError, row: Outbox, now: datetime) -> Outcome:
        if err.errcode == errcodes.WELCOME_ALREADY_SENT:
            return Outcome("done", err.errcode, "already delivered", result={"already": True})
        if err.errcode in (errcodes.WELCOME_CODE_INVALID, errcodes.WELCOME_CODE_MISSING):
            return Outcome("expired", err.errcode, err.errmsg)
        if err.errcode == errcodes.WELCOME_BEING_SENT:
            return Outcome("retry", err.errcode, err.errmsg, retry_in=1.0)
        if err.errcode == errcodes.INVALID_MEDIA_ID:   # any of the media may be the stale one: upload all again
            media.forget(group_qr_media_key(row.payload["store_code"]))
            for extra in row.payload.get("attachments", []):
                (kind, value), = extra.items()
                rel = value if isinstance(value, str) else (value or {}).get("pic")
                if rel:
                    media.forget(media_key(rel))
            return Outcome("retry", err.errcode, err.errmsg, retry_in=0.1)
        if err.errcode in errcodes.RETRYABLE:  # short steps: the window is 20 s, not minutes
            return Outcome("retry", err.errcode, err.errmsg, retry_in=min(4.0, 0.5 * 2 ** row.attempts))
        return default_decide(err, row, now)

    def settle(s: Session, row: Outbox, outcome: Outcome, now: datetime) -> None:
        # One UPDATE: the add's time rides in the payload (rows queued before it did are read for it).
        p = row.payload
        if "event_at" in p:
            event_at = datetime.fromisoformat(p["event_at"])
        else:
            event_at = s.scalar(select(Welcome.event_at).where(Welcome.event_id == p["event_id"]))
            if event_at is None:
                return
        status = {"done": "already" if outcome.result.get("already") else "sent",
                  "expired": "expired", "dead": "failed"}[outcome.status]
        if status == "expired" and (row.uncertain or outcome.maybe_done):
            status = "unknown"   # an earlier attempt's answer was lost: WeCom may have delivered it
        notes = outcome.result.get("notes") or []
        reason = (notes[0] if notes else None) if outcome.status == "done" else \
            (f"errcode {outcome.errcode}" if outcome.errcode else outcome.error)
        s.execute(update(Welcome).where(Welcome.event_id == p["event_id"]).values(
            status=status, sent_at=now if outcome.status == "done" else None,
            latency_ms=int((now - event_at).total_seconds() * 1000),
            qr_attached=bool(outcome.result.get("qr_attached")), reason=(reason or None) and str(reason)[:64]))

    return Executor("send_welcome_msg", send, decide, settle)


EXECUTORS = {"send_welcome_msg": welcome_executor}
