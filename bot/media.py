"""Temporary media (media/upload): a media_id lives 3 days, so cache it with its age and upload
again after 2.5 days, or when what it shows changed (the source)."""

from __future__ import annotations

import hashlib
import logging
import mimetypes
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from bot.clock import Clock
from bot.db.engine import reads_of
from bot.db.models import MediaCache
from bot.wecom.client import WeComClient

log = logging.getLogger(__name__)

LIFETIME = timedelta(days=3)
REFRESH_AFTER = timedelta(days=2, hours=12)
MEMO = timedelta(minutes=5)   # how long a process trusts the media_id it last saw without reading it again


class MediaLibrary:
    def __init__(self, sessions: sessionmaker[Session], client: WeComClient, clock: Clock):
        self.sessions = sessions
        self.reads = reads_of(sessions)
        self.client = client
        self.clock = clock
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        # key -> (source, media_id, until): what this process last read or uploaded. Every welcome asks for
        # its store's QR; under a burst the read was a tenth of a sender's time. A media_id another process
        # replaced on schedule stays valid to its own 3 days; one WeCom rejected (40007) fails once here
        # too, and forget() then drops it (and only it: not the fresh id another process uploaded).
        self._memo: dict[str, tuple[str, str, datetime]] = {}

    def _fresh(self, row: MediaCache | None, source: str) -> bool:
        return bool(row and row.source == source and self.clock.now() < row.uploaded_at + REFRESH_AFTER)

    def cached(self, key: str, source: str) -> str | None:
        now = self.clock.now()
        memo = self._memo.get(key)
        if memo and memo[0] == source and now < memo[2]:
            return memo[1]
        with self.reads() as s:
            row = s.get(MediaCache, key)
            if not self._fresh(row, source):
                return None
            self._remember(key, source, row.media_id, row.uploaded_at)
            return row.media_id

    def _remember(self, key: str, source: str, media_id: str, uploaded_at: datetime) -> None:
        self._memo[key] = (source, media_id, min(uploaded_at + REFRESH_AFTER, self.clock.now() + MEMO))

    def ensure(self, key: str, source: str, load: Callable[[], bytes], *, filename: str,
               media_type: str = "image", content_type: str = "image/png") -> str:
        """A media_id for `source`, uploading (once per key at a time in this process) when needed."""
        if media_id := self.cached(key, source):
            return media_id
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if media_id := self.cached(key, source):
                return media_id
            res = self.client.media.upload(media_type, load(), filename=filename, content_type=content_type)
            now = self.clock.now()
            values = dict(source=source, media_id=res["media_id"], uploaded_at=now, expires_at=now + LIFETIME)
            with self.sessions.begin() as s:
                row = s.get(MediaCache, key)
                if row is None:
                    try:
                        with s.begin_nested():
                            s.add(MediaCache(key=key, **values))
                    except IntegrityError:  # another process uploaded meanwhile: ours is as good
                        row = s.get(MediaCache, key)
                if row is not None:
                    for k, v in values.items():
                        setattr(row, k, v)
            self._remember(key, source, res["media_id"], now)
            log.info("media %s uploaded (%s)", key, res["media_id"][:12])
            return res["media_id"]

    def forget(self, key: str) -> None:
        """WeCom rejected the media_id (40007): the next ensure uploads again. When this process knows
        which id it sent, only that id's row goes: another process may have uploaded a fresh one."""
        memo = self._memo.pop(key, None)
        with self.sessions.begin() as s:
            if (row := s.get(MediaCache, key)) and (memo is None or row.media_id == memo[1]):
                s.delete(row)


class AttachmentFiles(Protocol):
    """Where an attachment's relative path is read from (the content calendar, the welcome)."""
    def attachment_path(self, relative: str) -> Path: ...


def media_key(relative: str) -> str:
    return f"cal:{relative}"


def attachment_body(att: dict, media: MediaLibrary, files: AttachmentFiles) -> dict:
    """A calendar or welcome attachment as WeCom's attachments[] item (add_msg_template and
    send_welcome_msg take the same shapes); files become media_ids uploaded once and re-uploaded
    before their 3 days run out (or when the file changed)."""
    (kind, value), = att.items()

    def media_id(relative: str, media_type: str) -> str:
        path = files.attachment_path(relative)
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return media.ensure(media_key(relative), f"sha256:{digest}", lambda: data, filename=path.name,
                            media_type=media_type, content_type=ctype)

    if kind in ("image", "video", "file"):
        return {"msgtype": kind, kind: {"media_id": media_id(value, kind)}}
    if kind == "link":
        return {"msgtype": "link", "link": {k: v for k, v in value.items() if v}}
    if kind == "miniprogram":
        return {"msgtype": "miniprogram", "miniprogram": {"title": value["title"], "appid": value["appid"],
                                                          "page": value["page"],
                                                          "pic_media_id": media_id(value["pic"], "image")}}
    raise ValueError(f"unknown attachment kind {kind!r}")
