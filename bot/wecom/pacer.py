"""Client-side pacing under WeCom's per-API frequency limit (10,000 calls a minute per corp, 45009 past
it, and then the API is blocked for the rest of the window). Waiting for room here costs the caller
milliseconds; tripping the limit costs a whole window."""

from __future__ import annotations

import threading
from collections import deque

from bot.clock import Clock

WINDOW = 60.0
# App messages have their own limits (30 a minute per member) and do not count against the API limit.
UNPACED = frozenset({"message/send"})


class NoRoom(Exception):
    def __init__(self, wait: float):
        super().__init__(f"no room under the per-API limit for {wait:.1f}s")
        self.wait = wait


class Pacer:
    """At most `per_minute` calls per endpoint in any 60 s: a sliding window of call times."""

    def __init__(self, clock: Clock, per_minute: int):
        self.clock = clock
        self.per_minute = per_minute
        self._calls: dict[str, deque[float]] = {}
        self._lock = threading.Lock()
        self.waited = 0.0   # seconds spent waiting for room, for benchmarks and metrics

    def acquire(self, endpoint: str, max_wait: float = float("inf")) -> None:
        """Wait for room; past `max_wait` raise NoRoom instead (a caller holding a lease must not sit
        on it for a minute: it hands the work back with the time room opens)."""
        if endpoint in UNPACED or self.per_minute <= 0:
            return
        while True:
            with self._lock:
                now = self.clock.timestamp()
                calls = self._calls.setdefault(endpoint, deque())
                while calls and calls[0] <= now - WINDOW:
                    calls.popleft()
                if len(calls) < self.per_minute:
                    calls.append(now)
                    return
                wait = calls[0] + WINDOW - now + 0.001
                if wait > max_wait:
                    raise NoRoom(wait)
                self.waited += wait
            self.clock.sleep(wait)
