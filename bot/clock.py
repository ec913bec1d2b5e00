"""Injected time. Domain code takes a Clock; only SystemClock reads the wall clock."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Protocol
from zoneinfo import ZoneInfo

SHANGHAI = ZoneInfo("Asia/Shanghai")


class Clock(Protocol):
    tz: ZoneInfo

    def now(self) -> datetime:
        """Aware datetime in the clock's zone."""

    def timestamp(self) -> float:
        """Seconds since the epoch."""

    def sleep(self, seconds: float) -> None:
        ...


class SystemClock:
    def __init__(self, tz: ZoneInfo = SHANGHAI):
        self.tz = tz

    def now(self) -> datetime:
        return datetime.now(self.tz)

    def timestamp(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class FakeClock:
    """A clock tests and the sandbox move by hand. Thread-safe; `sleep` advances it."""

    def __init__(self, start: datetime | None = None, tz: ZoneInfo = SHANGHAI):
        self.tz = tz
        self._t = (start or datetime(2026, 11, 23, 9, 0, tzinfo=tz)).timestamp()
        self._lock = threading.Lock()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp(), self.tz)

    def timestamp(self) -> float:
        with self._lock:
            return self._t

    def advance(self, seconds: float = 0, **kw: float) -> None:
        delta = seconds + timedelta(**kw).total_seconds()
        with self._lock:
            self._t += delta

    def sleep(self, seconds: float) -> None:
        # Another thread may be the one that moves time; yield a little real time too.
        self.advance(max(seconds, 0))
        time.sleep(0)


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc)
