"""Group commit: one writer thread takes every request waiting at that moment into one transaction.
Each caller awaits its own result, delivered only after the commit (or the commit's failure)."""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any


class GroupCommitter:
    """Subclasses implement `commit_batch(items) -> list of results` (an exception per item, or one
    raised for all); callers `await submit(item)`."""

    name = "group-commit"

    def __init__(self, max_batch: int):
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def commit_batch(self, items: list[Any]) -> list[Any]:
        raise NotImplementedError

    async def submit(self, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                    self._thread.start()
        self._queue.put((item, loop, fut))
        return await fut

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(5)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                batch.append(item)
            try:
                results = self.commit_batch([item for item, _, _ in batch])
            except Exception as e:  # the database failed: every waiting caller hears so
                results = [e] * len(batch)
            for (_, loop, fut), result in zip(batch, results):
                loop.call_soon_threadsafe(_settle, fut, result)


def _settle(fut: asyncio.Future, result: Any) -> None:
    if fut.done():  # the caller went away; what was committed stands
        return
    if isinstance(result, BaseException):
        fut.set_exception(result)
    else:
        fut.set_result(result)
