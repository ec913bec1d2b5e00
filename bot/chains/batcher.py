"""Group commit for orders: a rush of sign-ups for one chain would otherwise queue one commit at a
time behind the chain row's lock. One writer thread takes every order waiting at that moment into
one transaction, each in its own SAVEPOINT (a sold-out or over-limit order rolls back alone), and
commits once; each member is answered only after that commit. The stock rules are unchanged:
Chains.take's conditional UPDATEs, in order, inside the batch."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from bot.chains.service import ChainError, Chains
from bot.db.models import Chain, ChainOrder

log = logging.getLogger(__name__)


class OrderBatcher:
    def __init__(self, sessions: sessionmaker[Session], chains: Chains, on_notified: Callable[[], None],
                 max_batch: int = 64):
        self.sessions = sessions
        self.chains = chains
        self.on_notified = on_notified
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()

    async def take(self, chain: Chain, clean: tuple, chat_id: str | None, now: datetime) -> tuple[dict, bool]:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if self._thread is None:
            with self._start:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="order-batcher", daemon=True)
                    self._thread.start()
        self._queue.put((chain, clean, chat_id, now, loop, fut))
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
            self._commit(batch)

    def _commit(self, batch: list) -> None:
        outcomes: list[tuple[object, object]] = []
        notified = False
        try:
            with self.sessions.begin() as s:
                for chain, clean, chat_id, now, _, _ in batch:
                    try:
                        with s.begin_nested():
                            placed = self.chains.take(s, chain, *clean, chat_id=chat_id, now=now)
                        notified |= placed.notified
                        outcomes.append(({"order_token": placed.order.order_token, "remaining": placed.remaining,
                                          "qty": placed.order.qty}, True))
                    except IntegrityError:  # the same request_id, placed meanwhile (maybe in this batch)
                        existing = s.scalar(select(ChainOrder).where(ChainOrder.chain_id == chain.id,
                                                                     ChainOrder.request_id == clean[3]))
                        left = s.scalar(select(Chain.stock_left).where(Chain.id == chain.id))
                        outcomes.append(({"order_token": existing.order_token, "remaining": left,
                                          "qty": existing.qty}, False) if existing else
                                        (ChainError("请稍后再试。"), None))
                    except ChainError as e:
                        outcomes.append((e, None))
        except Exception as e:  # the database failed: nobody's order stands, everybody hears so
            log.exception("order batch of %d failed", len(batch))
            outcomes = [(e, None)] * len(batch)
        for (_, _, _, _, loop, fut), (result, created) in zip(batch, outcomes):
            loop.call_soon_threadsafe(_settle, fut, result, created)
        if notified:
            self.on_notified()


def _settle(fut: asyncio.Future, result, created) -> None:
    if fut.done():
        return
    if isinstance(result, BaseException):
        fut.set_exception(result)
    else:
        fut.set_result((result, created))
