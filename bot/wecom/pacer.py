"""Client-side pacing under WeCom's per-API frequency limits (per corp, per API: 10,000 calls a minute
and 150,000 an hour, 45009 past either, and then the API is blocked for the rest of the window).
Waiting for room here costs the caller milliseconds; tripping the limit costs a whole window.

Two pacers with one interface, `acquire(endpoint, max_wait)`:
- `Pacer`: in this process only (SQLite: one host, one process calling WeCom; tests, scripts).
- `SqlPacer`: one limit for every process on every host, counted in PostgreSQL (`wecom_rate`). Why a
  counter table and not Redis or `pyrate-limiter`: PostgreSQL is already the shared store of a
  scale-out (DESIGN §4), so this adds no service and no dependency, and the count is one atomic
  statement (`INSERT … ON CONFLICT DO UPDATE … WHERE calls < limit RETURNING`), one round trip, no
  lock held past it. The library's buckets read the wall clock themselves, which the FakeClock of the
  tests and the sandbox could not drive.
"""

from __future__ import annotations

import logging
import threading
from collections import deque

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from bot.clock import Clock

log = logging.getLogger(__name__)

WINDOW = 60.0
HOUR = 3600
# App messages have their own limits (30 a minute per member) and do not count against the API limit.
UNPACED = frozenset({"message/send"})


class NoRoom(Exception):
    def __init__(self, wait: float):
        super().__init__(f"no room under the per-API limit for {wait:.1f}s")
        self.wait = wait


class Pacer:
    """At most `per_minute` calls per endpoint in any 60 s and `straddle_seconds` more (a sliding window
    of call times: WeCom's minute counts calls as they arrive, and a call may leave a second or two
    before it lands) and `per_hour` in each clock hour (0: no hourly limit)."""

    def __init__(self, clock: Clock, per_minute: int, per_hour: int = 0, straddle_seconds: float = 2.0):
        self.clock = clock
        self.window = WINDOW + straddle_seconds
        self.per_minute = per_minute
        self.per_hour = per_hour
        self._calls: dict[str, deque[float]] = {}
        self._hours: dict[str, tuple[int, int]] = {}   # endpoint -> (hour start, calls in it)
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
                while calls and calls[0] <= now - self.window:
                    calls.popleft()
                hour = int(now // HOUR) * HOUR
                start, in_hour = self._hours.get(endpoint, (hour, 0))
                if start != hour:
                    in_hour = 0
                if self.per_hour > 0 and in_hour >= self.per_hour:
                    wait = hour + HOUR - now + 0.001
                elif len(calls) < self.per_minute:
                    calls.append(now)
                    self._hours[endpoint] = (hour, in_hour + 1)
                    return
                else:
                    wait = calls[0] + self.window - now + 0.001
                if wait > max_wait:
                    raise NoRoom(wait)
                self.waited += wait
            self.clock.sleep(wait)


# One statement, so one round trip on an autocommit connection: count the call in its minute if the
# minute has room, then in the next minute if the call may land there (`:straddles`) and it has room,
# then likewise in its hour and the next. A count made before a later window is found full is
# harmless: that window's callers wait for it to end, and a minute or hour about to end is not read
# again.
_TAKE = text("""
WITH m AS (
    INSERT INTO wecom_rate (corp_id, endpoint, window_seconds, window_start, calls)
    VALUES (:corp, :endpoint, 60, :minute, 1)
    ON CONFLICT (corp_id, endpoint, window_seconds, window_start)
    DO UPDATE SET calls = wecom_rate.calls + 1 WHERE wecom_rate.calls < :per_minute
    RETURNING calls
), m2 AS (
    INSERT INTO wecom_rate (corp_id, endpoint, window_seconds, window_start, calls)
    SELECT :corp, :endpoint, 60, :minute + 60, 1 WHERE :straddles AND EXISTS (SELECT 1 FROM m)
    ON CONFLICT (corp_id, endpoint, window_seconds, window_start)
    DO UPDATE SET calls = wecom_rate.calls + 1 WHERE wecom_rate.calls < :per_minute
    RETURNING calls
), h AS (
    INSERT INTO wecom_rate (corp_id, endpoint, window_seconds, window_start, calls)
    SELECT :corp, :endpoint, 3600, :hour, 1
    WHERE EXISTS (SELECT 1 FROM m) AND (NOT :straddles OR EXISTS (SELECT 1 FROM m2))
    ON CONFLICT (corp_id, endpoint, window_seconds, window_start)
    DO UPDATE SET calls = wecom_rate.calls + 1 WHERE wecom_rate.calls < :per_hour
    RETURNING calls
), h2 AS (
    INSERT INTO wecom_rate (corp_id, endpoint, window_seconds, window_start, calls)
    SELECT :corp, :endpoint, 3600, :hour + 3600, 1 WHERE :straddles_hour AND EXISTS (SELECT 1 FROM h)
    ON CONFLICT (corp_id, endpoint, window_seconds, window_start)
    DO UPDATE SET calls = wecom_rate.calls + 1 WHERE wecom_rate.calls < :per_hour
    RETURNING calls
)
SELECT EXISTS (SELECT 1 FROM m), NOT :straddles OR EXISTS (SELECT 1 FROM m2),
       EXISTS (SELECT 1 FROM h), NOT :straddles_hour OR EXISTS (SELECT 1 FROM h2)
""")
_PURGE = text("DELETE FROM wecom_rate WHERE window_start < :before")


class SqlPacer:
    """One limit per (corp, API) for all processes on all hosts: fixed windows of the clock minute and
    the clock hour, as WeCom's (and the sandbox's) counters are, counted in `wecom_rate`.

    WeCom counts a call in the window it arrives in, which is not always the one it left in: a call
    taken in the last `straddle_seconds` of a window is counted in the next window too, so that
    calls taken at 59.9 s and arriving after the minute turned (a loaded host, a slow network) cannot
    push the next minute over the limit (seen: two 45009s in the chaos test). The cost is at most
    that many seconds' calls of a window's capacity, and only when a window is that full.

    A window found full is remembered here until it ends, so waiting callers do not ask the
    database again. If the database cannot be reached the pacer falls back to pacing this process
    alone at 1/`expected_processes` of the limits, says so once, and tries the database again every
    `retry_seconds`: welcomes keep going out."""

    def __init__(self, engine: Engine, clock: Clock, per_minute: int, per_hour: int = 0, *,
                 corp_id: str = "", expected_processes: int = 4, retry_seconds: float = 30.0,
                 straddle_seconds: float = 2.0):
        self.engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.clock = clock
        self.per_minute = per_minute
        self.per_hour = per_hour
        self.corp_id = corp_id
        n = max(1, expected_processes)
        self.fallback = Pacer(clock, max(1, per_minute // n), per_hour // n if per_hour > 0 else 0)
        self.retry_seconds = retry_seconds
        self.straddle_seconds = straddle_seconds
        self._full_until: dict[str, float] = {}
        self._down_until = 0.0   # the store failed: pace locally until then
        self._down_logged = False
        self._purged_minute = 0
        self._waited = 0.0

    @property
    def waited(self) -> float:
        return self._waited + self.fallback.waited

    @property
    def degraded(self) -> bool:
        """Pacing locally because the shared store could not be reached."""
        return self.clock.timestamp() < self._down_until

    def acquire(self, endpoint: str, max_wait: float = float("inf")) -> None:
        if endpoint in UNPACED or self.per_minute <= 0:
            return
        while True:
            now = self.clock.timestamp()
            if now < self._down_until:
                return self.fallback.acquire(endpoint, max_wait)
            wait = self._full_until.get(endpoint, 0.0) - now
            if wait <= 0:
                try:
                    wait = self._take(endpoint, now)
                except SQLAlchemyError as e:
                    self._store_failed(e, now)
                    continue
                if wait <= 0:
                    return
                self._full_until[endpoint] = now + wait
            if wait > max_wait:
                raise NoRoom(wait)
            self._waited += wait
            self.clock.sleep(wait)

    def _take(self, endpoint: str, now: float) -> float:
        """Count one call now if its windows have room (0.0), else the seconds until room opens."""
        minute = int(now // WINDOW) * int(WINDOW)
        hour = int(now // HOUR) * HOUR
        with self.engine.connect() as conn:
            if minute != self._purged_minute:   # once a minute per process: drop windows long past
                self._purged_minute = minute
                conn.execute(_PURGE, {"before": hour - 2 * HOUR})
            straddles = now + self.straddle_seconds >= minute + WINDOW
            in_minute, in_next_minute, in_hour, in_next_hour = conn.execute(_TAKE, {
                "corp": self.corp_id, "endpoint": endpoint, "minute": minute, "hour": hour,
                "straddles": straddles, "straddles_hour": straddles and minute + WINDOW >= hour + HOUR,
                "per_minute": self.per_minute,
                "per_hour": self.per_hour if self.per_hour > 0 else 2**31 - 1}).one()
        if self._down_logged:
            self._down_logged = False
            log.warning("WeCom rate limit: the shared count in the database is back; pacing all processes together again")
        if not in_minute:
            return minute + WINDOW - now + 0.001
        if not in_next_minute:
            return minute + 2 * WINDOW - now + 0.001
        if not in_hour:
            return hour + HOUR - now + 0.001
        if not in_next_hour:
            return hour + 2 * HOUR - now + 0.001
        return 0.0

    def _store_failed(self, e: SQLAlchemyError, now: float) -> None:
        self._down_until = now + self.retry_seconds
        if not self._down_logged:
            self._down_logged = True
            log.warning("WeCom rate limit: the shared count in the database cannot be reached (%s); this process "
                        "paces itself at %d/min per API until it can", type(e).__name__, self.fallback.per_minute)
