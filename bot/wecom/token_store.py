"""access_token (and the jsapi tickets) shared by every process of the bot, refreshed by one of them
at a time, once per lifetime.

A token is used until it expires by what WeCom answered, or until WeCom rejects it (the client then
invalidates it and refreshes once). No early refresh: WeCom answers gettoken with the same token
while it is valid (sandbox rules.gettoken_repeat), so refreshing early only fetches the same token
again, on every call of the token's last minutes.

The token lives in the `wecom_token` row. A process that finds it missing or expired takes a short
lease with a conditional UPDATE (works the same on SQLite and PostgreSQL); the others wait for the
new value instead of all calling gettoken at once (a thundering herd trips 45033).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import and_, or_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from bot.clock import Clock
from bot.db.engine import reads_of
from bot.db.models import WeComToken

log = logging.getLogger(__name__)

LEASE = timedelta(seconds=15)
# expires_in is whole seconds, rounded down: 0 still means up to a second of life. Never store less
# than this, so an answer of 0 (or less) cannot turn every call into a gettoken.
MIN_LIFETIME = timedelta(seconds=1)
Fetch = Callable[[], tuple[str, int]]    # -> (access_token, expires_in)


def expiry(now: datetime, expires_in: int) -> datetime:
    return now + max(timedelta(seconds=expires_in), MIN_LIFETIME)


class _KeyLocks:
    """A lock per key, not one per store: fetching a jsapi ticket needs the access token from the
    same store, in the same thread."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def __call__(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())


class TokenStore(Protocol):
    def get(self, key: str, fetch: Fetch) -> str: ...

    def invalidate(self, key: str, token: str) -> None:
        """Forget `token` if it is still the current one (another caller may have refreshed)."""


class MemoryTokenStore:
    """One process only (tests, scripts)."""

    def __init__(self, clock: Clock):
        self.clock = clock
        self._tokens: dict[str, tuple[str, datetime]] = {}
        self._lock = _KeyLocks()

    def get(self, key: str, fetch: Fetch) -> str:
        with self._lock(key):
            cur = self._tokens.get(key)
            if cur and cur[1] > self.clock.now():
                return cur[0]
            token, expires_in = fetch()
            self._tokens[key] = (token, expiry(self.clock.now(), expires_in))
            return token

    def invalidate(self, key: str, token: str) -> None:
        with self._lock(key):
            if self._tokens.get(key, ("",))[0] == token:
                del self._tokens[key]


class SqlTokenStore:
    def __init__(self, sessions: sessionmaker[Session], clock: Clock, poll_seconds: float = 0.05):
        self.sessions = sessions
        self.reads = reads_of(sessions)
        self.clock = clock
        self.poll = poll_seconds
        self.owner = f"{uuid.uuid4().hex[:12]}"
        self._local: dict[str, tuple[str, datetime]] = {}
        self._lock = _KeyLocks()  # per key, one thread per process goes to the database

    def get(self, key: str, fetch: Fetch) -> str:
        cached = self._local.get(key)
        if cached and cached[1] > self.clock.now():
            return cached[0]
        with self._lock(key):
            cached = self._local.get(key)
            if cached and cached[1] > self.clock.now():
                return cached[0]
            token, expires_at = self._get_shared(key, fetch)
            self._local[key] = (token, expires_at)
            return token

    def invalidate(self, key: str, token: str) -> None:
        with self._lock(key):
            if self._local.get(key, ("",))[0] == token:
                self._local.pop(key, None)
            with self.sessions.begin() as s:
                s.execute(update(WeComToken).where(WeComToken.key == key, WeComToken.value == token)
                          .values(value=None, expires_at=None))

    def _fresh(self, row: WeComToken | None) -> bool:
        return bool(row and row.value and row.expires_at and row.expires_at > self.clock.now())

    def _get_shared(self, key: str, fetch: Fetch) -> tuple[str, datetime]:
        deadline = self.clock.timestamp() + LEASE.total_seconds() * 2
        while True:
            with self.reads() as s:
                row = s.get(WeComToken, key)
                if self._fresh(row):
                    return row.value, row.expires_at
            if self._take_lease(key):
                try:
                    token, expires_in = fetch()
                except BaseException:
                    self._release(key)
                    raise
                expires_at = expiry(self.clock.now(), expires_in)
                with self.sessions.begin() as s:
                    s.execute(update(WeComToken).where(WeComToken.key == key)
                              .values(value=token, expires_at=expires_at, lease_owner=None, lease_until=None))
                log.info("access_token refreshed", extra={"token_key": key[:12]})
                return token, expires_at
            if self.clock.timestamp() > deadline:
                # The lease holder died or hangs: its lease has run out, so ours will come.
                log.warning("waited %.0fs for another process to refresh the token", LEASE.total_seconds() * 2)
                deadline = self.clock.timestamp() + LEASE.total_seconds() * 2
            self.clock.sleep(self.poll)

    def _take_lease(self, key: str) -> bool:
        now = self.clock.now()
        with self.sessions.begin() as s:
            if s.get(WeComToken, key) is None:
                try:
                    with s.begin_nested():
                        s.add(WeComToken(key=key))
                except IntegrityError:
                    pass
            # Only while the token still needs refreshing: a process that saw it stale must not
            # take the lease just after another one stored a fresh token.
            res = s.execute(
                update(WeComToken)
                .where(and_(WeComToken.key == key,
                            or_(WeComToken.lease_until.is_(None), WeComToken.lease_until < now),
                            or_(WeComToken.value.is_(None), WeComToken.expires_at.is_(None),
                                WeComToken.expires_at <= now)))
                .values(lease_owner=self.owner, lease_until=now + LEASE))
            return res.rowcount == 1

    def _release(self, key: str) -> None:
        with self.sessions.begin() as s:
            s.execute(update(WeComToken).where(WeComToken.key == key, WeComToken.lease_owner == self.owner)
                      .values(lease_owner=None, lease_until=None))
