"""Group commit for orders: a rush of sign-ups for one chain would otherwise queue one commit at a
time behind the chain row's lock. One writer thread takes every sign-up waiting at that moment,
checks them all in one read (Chains.check_many: a sold-out rush is answered from it, with no write
and no thread hop per sign-up), and takes the rest in one transaction, each in its own SAVEPOINT (a
sold-out or over-limit order, or one whose values the database refuses, rolls back alone: it never
fails its neighbours), and commits once; each member is answered only after that commit. The stock
rules are unchanged: Chains.take's conditional UPDATEs, in order, inside the batch."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from bot.chains.service import (REFUSED_VALUES, ChainError, Chains, CleanOrder, InvalidOrder, OrderRequest,
                                SignUp, same_request)
from bot.db.engine import reads_of
from bot.messaging.group_commit import GroupCommitter
from bot.db.models import Chain, ChainOrder

log = logging.getLogger(__name__)


class OrderBatcher(GroupCommitter):
    name = "order-batcher"

    def __init__(self, sessions: sessionmaker[Session], chains: Chains, on_notified: Callable[[], None],
                 max_batch: int = 64):
        super().__init__(max_batch)
        self.sessions = sessions
        self.reads = reads_of(sessions)
        self.chains = chains
        self.on_notified = on_notified

    async def take(self, sign_up: SignUp) -> tuple[dict, bool]:
        return await self.submit(sign_up)

    def commit_batch(self, batch: list[SignUp | OrderRequest]) -> list:
        """Each item's outcome: (answer, created) or the ChainError to answer. An OrderRequest was
        checked by its caller already."""
        outcomes: list = [None] * len(batch)
        batch = self._check(batch, outcomes)
        by_chain: dict[int, list[int]] = defaultdict(list)
        for i, req in enumerate(batch):
            if outcomes[i] is None:
                by_chain[req.chain.id].append(i)
        if not by_chain:   # all answered from the read: no write transaction
            return outcomes
        notified = False
        try:
            with self.sessions.begin() as s:
                for idxs in by_chain.values():
                    if len(idxs) > 1 and self._take_together(s, batch, idxs, outcomes):
                        notified |= outcomes.pop()
                        continue
                    for i in idxs:
                        outcomes[i], told = self._take_one(s, *batch[i])
                        notified |= told
        except Exception as e:   # rolled back: the sign-ups it was taking hear so; the read's answers stand
            log.exception("order batch of %d failed", len(batch))
            taking = {i for idxs in by_chain.values() for i in idxs}
            return [e if i in taking else outcome for i, outcome in enumerate(outcomes[:len(batch)])]
        if notified:
            self.on_notified()
        return outcomes

    def _check(self, batch: list[SignUp | OrderRequest], outcomes: list) -> list:
        """The batch with each sign-up that may be taken as its OrderRequest; the outcome of each one
        answered from the read (refused, or a replay) filled in."""
        idxs = [i for i, item in enumerate(batch) if isinstance(item, SignUp)]
        if not idxs:
            return batch
        with self.reads() as rs:
            checked = self.chains.check_many(rs, [batch[i] for i in idxs])
        batch = list(batch)
        for i, verdict in zip(idxs, checked):
            if isinstance(verdict, ChainError):
                outcomes[i] = verdict
                continue
            chain, existing = verdict
            if existing is not None:  # a replayed submit (same buyer): its order, nothing taken twice
                outcomes[i] = ({"order_token": existing.order_token, "remaining": chain.stock_left,
                                "qty": existing.qty}, False)
            else:
                batch[i] = OrderRequest(chain, *batch[i][1:])
        return batch

    def _take_together(self, s: Session, batch: list[OrderRequest], idxs: list[int], outcomes: list) -> bool:
        """The batch's orders for one chain in one go; at the sell-out, the ones that still fit (in
        order) in one go and the rest told at once. False: take them one by one."""
        items = [batch[i] for i in idxs]
        fast = self.chains.take_many(s, items)
        rest: list[int] = []
        if fast is None:
            chain = items[0].chain
            row = s.execute(select(Chain.stock_left, Chain.status).where(Chain.id == chain.id)).one()
            if row.status != "open":
                return False
            budget, fit = row.stock_left, []
            for i in idxs:
                qty = batch[i].order.qty
                if qty <= budget:
                    fit.append(i)
                    budget -= qty
                else:
                    rest.append(i)
            if not rest or not fit:
                return False
            # still the conditional UPDATE: if another process took stock meanwhile, nothing is taken
            fast = self.chains.take_many(s, [batch[i] for i in fit])
            if fast is None:
                return False
            idxs = fit
        placed_all, told = fast
        for i, placed in zip(idxs, placed_all):
            outcomes[i] = ({"order_token": placed.order_token, "remaining": placed.remaining,
                            "qty": placed.qty}, True)
        left = placed_all[-1].remaining
        for i in rest:
            outcomes[i] = self.chains.sold_out(left)
        outcomes.append(told)
        return True

    def _take_one(self, s: Session, chain: Chain, clean: CleanOrder, chat_id: str | None, now: datetime):
        """One order in its own SAVEPOINT: what it cannot have rolls back alone."""
        try:
            with s.begin_nested():
                placed = self.chains.take(s, chain, *clean, chat_id=chat_id, now=now)
            return ({"order_token": placed.order_token, "remaining": placed.remaining,
                     "qty": placed.qty}, True), placed.notified
        except IntegrityError:  # the same request_id, placed meanwhile (maybe in this batch)
            existing = s.scalar(select(ChainOrder).where(ChainOrder.chain_id == chain.id,
                                                         ChainOrder.request_id == clean.request_id))
            if existing is None:
                return ChainError("请稍后再试。"), False
            try:
                same_request(existing, clean.name, clean.phone_tail, clean.qty)   # another buyer gets no one's token
            except ChainError as e:
                return e, False
            left = s.scalar(select(Chain.stock_left).where(Chain.id == chain.id))
            return ({"order_token": existing.order_token, "remaining": left, "qty": existing.qty}, False), False
        except REFUSED_VALUES:  # validation let through what the database will not store: this order only
            log.exception("order %s refused by the database", clean.request_id)
            return InvalidOrder("报名信息里有无法保存的字符，请检查后再提交。"), False
        except ChainError as e:
            return e, False
