"""Logging helpers. A flood of garbage requests must not become a flood of log lines."""

from __future__ import annotations

import logging
import threading
import time


class RateLimitedLog:
    """At most `per_minute` lines a minute through `logger`; what it holds back is counted and told
    in the first line of the next minute. Monotonic time: this is about the log, not the domain."""

    def __init__(self, logger: logging.Logger, per_minute: int = 20, monotonic=time.monotonic):
        self.logger = logger
        self.per_minute = per_minute
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._window = -1
        self._told = 0
        self._held = 0

    def warning(self, msg: str, *args) -> bool:
        """Log unless this minute's lines are spent; True when it logged."""
        with self._lock:
            window = int(self.monotonic() // 60)
            held = 0
            if window != self._window:
                self._window, self._told, held, self._held = window, 0, self._held, 0
            if self._told >= self.per_minute:
                self._held += 1
                return False
            self._told += 1
        if held:
            self.logger.warning("%d similar lines were held back in the last minute", held)
        self.logger.warning(msg, *args)
        return True
