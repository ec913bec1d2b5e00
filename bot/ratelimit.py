"""An in-process rate limiter: one token bucket per key, refilled by the injected clock.

Why not a library: the well-kept ones (`limits`, `slowapi`) read the wall clock themselves, so tests
with a FakeClock could not drive them, and a bucket is a dozen lines. Memory is bounded: at most
`max_keys` buckets, the least recently seen evicted first (an evicted key starts again with a full
bucket, which errs on the side of the member). Limits are per process: with several web processes
behind one proxy each holds its own buckets (the proxy's `limit_req` is the shared one)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

from bot.clock import Clock


class RateLimiter:
    """At most `per_minute` hits per key in any minute, bursts included; 0 turns the limit off."""

    def __init__(self, per_minute: int, clock: Clock, max_keys: int = 50_000):
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0          # tokens per second
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()   # key -> (tokens, at)
        self._lock = threading.Lock()

    def hit(self, key: Hashable) -> float:
        """Take one token for `key`: 0.0 when allowed, else the seconds until one is back."""
        if self.capacity <= 0:
            return 0.0
        now = self.clock.timestamp()
        with self._lock:
            tokens, at = self._buckets.pop(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + max(0.0, now - at) * self.rate)
            wait = 0.0
            if tokens >= 1:
                tokens -= 1
            else:
                wait = (1 - tokens) / self.rate
            self._buckets[key] = (tokens, now)       # re-inserted last: the most recently seen
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            return wait

    def __len__(self) -> int:
        return len(self._buckets)
