"""Background workers: event dispatch and outbox sending, as threads in `serve` (role worker/all).

Doorbells wake them as soon as this process stores an event (the dispatchers) or queues an
outbox row (the senders); polling covers rows written by other processes."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from bot.messaging.heartbeat import process_id

log = logging.getLogger(__name__)


class Doorbell:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._rung = 0

    def ring(self) -> None:
        with self._cond:
            self._rung += 1
            self._cond.notify_all()

    def wait(self, timeout: float, seen: int) -> int:
        with self._cond:
            if self._rung == seen:
                self._cond.wait(timeout)
            return self._rung

    @property
    def count(self) -> int:
        return self._rung


def worker_id(name: str) -> str:
    """claimed_by of one worker thread: the process's id (its heartbeat's), then the thread."""
    return f"{process_id()}/{name}"


class WorkerPool:
    """Runs `run_once` jobs in threads until stopped; a job returning 0 waits for the doorbell."""

    def __init__(self, doorbell: Doorbell, poll_seconds: float = 0.2):
        self.doorbell = doorbell
        self.poll = poll_seconds
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._bells = [doorbell]

    def add(self, name: str, run_once: Callable[[], int], bell: Doorbell | None = None) -> None:
        """A job woken by `bell` (the pool's doorbell unless given)."""
        bell = bell or self.doorbell
        if bell not in self._bells:
            self._bells.append(bell)
        t = threading.Thread(target=self._loop, args=(name, run_once, bell), name=name, daemon=True)
        self._threads.append(t)

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def _loop(self, name: str, run_once: Callable[[], int], bell: Doorbell) -> None:
        seen = bell.count
        while not self._stop.is_set():
            try:
                if run_once():
                    seen = bell.count
                    continue
            except Exception:  # the database went away, say: log, back off, keep the worker alive
                log.exception("%s: run failed", name)
                self._stop.wait(1.0)
            seen = bell.wait(self.poll, seen)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for bell in self._bells:
            bell.ring()
        for t in self._threads:
            t.join(timeout)
