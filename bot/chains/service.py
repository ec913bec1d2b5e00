"""Chains: open, order, cancel, close. Stock and the per-person limit change only by conditional
UPDATE … WHERE … RETURNING in one transaction (never read-then-write; SELECT FOR UPDATE alone is
ignored by SQLite), so no concurrency on SQLite or PostgreSQL can oversell or overbuy."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot.chains.parse import OpenChainArgs
from bot.db.models import Chain, ChainBuyer, ChainOrder, GroupChat, Store
from bot.outbox import OutboxRepo, insert_ignore
from bot.text import app_text as _text, fit_lines


class ChainError(Exception):
    status = 400

    def __init__(self, message: str, **extra):
        super().__init__(message)
        self.message = message
        self.extra = extra


class ChainNotFound(ChainError):
    status = 404


class InvalidOrder(ChainError):
    status = 422


class SoldOut(ChainError):
    status = 409


class OverLimit(ChainError):
    status = 409


class NotOpenYet(ChainError):
    status = 409


class ChainClosed(ChainError):
    status = 410


def yuan(cents: int) -> str:
    return f"{cents / 100:.2f}".rstrip("0").rstrip(".")


def mask_name(name: str) -> str:
    return name[0] + "*" * min(2, max(1, len(name) - 1)) if name else "*"


def mask_phone(tail: str) -> str:
    return "**" + tail[-2:]


def csv_signature(key: bytes, token: str, userid: str) -> str:
    return hmac.new(key, f"{token}:{userid}".encode(), hashlib.sha256).hexdigest()[:32]


@dataclass
class PlacedOrder:
    order: ChainOrder
    remaining: int
    created: bool
    notified: bool = False   # a message to the clerk was queued (half sold, sold out)


def validate(name, phone_tail, qty, request_id) -> tuple[str, str, int, str]:
    name = str(name or "").strip()
    phone_tail = str(phone_tail or "").strip()
    request_id = str(request_id or "").strip()
    if not name or len(name) > 20 or any(ord(ch) < 32 for ch in name):
        raise InvalidOrder("请填写称呼（1-20个字）。")
    if not re.fullmatch(r"\d{4}", phone_tail):
        raise InvalidOrder("请填写手机号后4位数字。")
    try:
        qty = int(str(qty).strip())
    except (TypeError, ValueError):
        raise InvalidOrder("份数要填整数。") from None
    if not re.fullmatch(r"[A-Za-z0-9_-]{8,64}", request_id):
        raise InvalidOrder("请求编号无效，请刷新页面再提交。")
    return name, phone_tail, qty, request_id


class Chains:
    def __init__(self, public_base_url: str, csv_key: bytes, clock):
        self.base = public_base_url.rstrip("/")
        self.csv_key = csv_key
        self.clock = clock

    def link(self, chain: Chain, chat_id: str | None = None) -> str:
        return f"{self.base}/c/{chain.token}" + (f"?g={chat_id}" if chat_id else "")

    def csv_link(self, chain: Chain) -> str:
        return f"{self.base}/c/{chain.token}/orders.csv?u={chain.clerk}&sig={csv_signature(self.csv_key, chain.token, chain.clerk)}"

    # -- opening ----------------------------------------------------------------------------
    def open(self, s: Session, store: Store, clerk: str, args: OpenChainArgs, now: datetime) -> Chain:
        chain = Chain(token=secrets.token_urlsafe(9), store_code=store.code, clerk=clerk, title=args.title,
                      price_cents=args.price_cents, stock_total=args.stock, stock_left=args.stock,
                      per_person_limit=args.limit, opens_at=args.opens_at or now, deadline=args.deadline,
                      pickup_note=args.pickup_note, created_at=now)
        s.add(chain)
        s.flush()
        return chain

    def groups(self, s: Session, store_code: str) -> list[GroupChat]:
        return list(s.scalars(select(GroupChat).where(GroupChat.store_code == store_code).order_by(GroupChat.name)))

    # -- ordering ---------------------------------------------------------------------------
    def check(self, reads: Session, token: str, *, name, phone_tail, qty, request_id, now: datetime
              ) -> tuple[Chain, ChainOrder | None, tuple[str, str, int, str]]:
        """Everything that can be answered from a read, without the write lock: invalid input, an
        unknown, closed or not yet open chain, a quantity over the limit, a replayed request, and
        a chain visibly sold out. A fast path only: `take` decides by conditional UPDATE."""
        name, phone_tail, qty, request_id = validate(name, phone_tail, qty, request_id)
        # One round trip: the chain, and the order this request_id already placed (a retried submit).
        row = reads.execute(select(Chain, ChainOrder).outerjoin(ChainOrder, and_(
            ChainOrder.chain_id == Chain.id, ChainOrder.request_id == request_id)).where(Chain.token == token)).first()
        if row is None:
            raise ChainNotFound("没有这个团购。")
        chain, existing = row
        if existing is not None:  # the same answer, nothing taken twice
            return chain, existing, (name, phone_tail, qty, request_id)
        if chain.status != "open" or now >= chain.deadline:
            raise ChainClosed("这个团购已经截单了。", remaining=chain.stock_left)
        if now < chain.opens_at:
            raise NotOpenYet(f"还没开始，{chain.opens_at.astimezone(self.clock.tz):%m-%d %H:%M} 开团。",
                             remaining=chain.stock_left)
        if not 1 <= qty <= chain.per_person_limit:
            raise InvalidOrder(f"每人限购 {chain.per_person_limit} 份，请填 1 到 {chain.per_person_limit}。")
        if chain.stock_left == 0:
            raise SoldOut("已经抢完了。", remaining=0)
        return chain, None, (name, phone_tail, qty, request_id)

    def take(self, s: Session, chain: Chain, name: str, phone_tail: str, qty: int, request_id: str,
             chat_id: str | None, now: datetime) -> PlacedOrder:
        """One write transaction (the caller commits); any ChainError leaves nothing behind. The
        chain row, which every order contends for, is updated last, so its lock is held briefly."""
        buyer_key = f"{name.lower()}|{phone_tail}"
        insert_ignore(s, ChainBuyer, dict(chain_id=chain.id, buyer_key=buyer_key, qty=0))
        held = s.scalar(update(ChainBuyer).where(
            ChainBuyer.chain_id == chain.id, ChainBuyer.buyer_key == buyer_key,
            ChainBuyer.qty + qty <= chain.per_person_limit).values(qty=ChainBuyer.qty + qty).returning(ChainBuyer.qty))
        if held is None:
            had = s.scalar(select(ChainBuyer.qty).where(ChainBuyer.chain_id == chain.id,
                                                        ChainBuyer.buyer_key == buyer_key)) or 0
            raise OverLimit(f"每人限购 {chain.per_person_limit} 份，你已报名 {had} 份，最多还能报 "
                            f"{max(0, chain.per_person_limit - had)} 份。",
                            remaining=chain.stock_left, allowed=max(0, chain.per_person_limit - had))
        group = s.get(GroupChat, chat_id) if chat_id else None
        order = ChainOrder(chain_id=chain.id, order_token=secrets.token_urlsafe(12), request_id=request_id,
                           buyer_key=buyer_key, name=name, phone_tail=phone_tail, qty=qty,
                           chat_id=group.chat_id if group and group.store_code == chain.store_code else None,
                           store_code=chain.store_code, created_at=now)
        s.add(order)
        s.flush()  # a concurrent duplicate request_id fails here: the caller replays it
        left = s.scalar(update(Chain).where(Chain.id == chain.id, Chain.status == "open", Chain.stock_left >= qty,
                                            Chain.deadline > now)
                        .values(stock_left=Chain.stock_left - qty).returning(Chain.stock_left)
                        .execution_options(synchronize_session=False))
        if left is None:  # raising rolls the whole transaction back: the hold and the order go too
            row = s.execute(select(Chain.stock_left, Chain.status).where(Chain.id == chain.id)).one()
            if row.status != "open":
                raise ChainClosed("这个团购已经截单了。", remaining=row.stock_left)
            raise self.sold_out(row.stock_left)
        return PlacedOrder(order, left, True, notified=self._milestones(s, chain, left, now))

    @staticmethod
    def sold_out(left: int) -> SoldOut:
        return SoldOut("已经抢完了。" if not left else f"只剩 {left} 份了，请少报一些。", remaining=left)

    def take_many(self, s: Session, items: list[tuple]) -> tuple[list[PlacedOrder], bool] | None:
        """Several orders for one chain in three statements: the buyers' holds in one conditional upsert,
        the stock for all of them in one conditional UPDATE, the orders in one INSERT. All or nothing:
        None (and nothing changed) when any order would fail or the batch is not simple (a buyer or a
        request twice), and the caller takes them one by one for precise answers. Near a sell-out that
        is the common case; before it, a rush of sign-ups costs three statements per batch, not seven
        per order."""
        chain = items[0][0]
        now = max(it[3] for it in items)
        keys = [f"{clean[0].lower()}|{clean[1]}" for _, clean, _, _ in items]
        if len(set(keys)) != len(keys) or len({clean[3] for _, clean, _, _ in items}) != len(items):
            return None
        total = sum(clean[2] for _, clean, _, _ in items)
        dialect = s.get_bind().dialect.name
        ins = (pg_insert if dialect == "postgresql" else sqlite_insert)(ChainBuyer)
        chats = {c for _, _, c, _ in items if c}
        groups = dict(s.execute(select(GroupChat.chat_id, GroupChat.store_code)
                                .where(GroupChat.chat_id.in_(chats))).all()) if chats else {}
        try:
            with s.begin_nested() as sp:
                upsert = ins.values([dict(chain_id=chain.id, buyer_key=k, qty=clean[2])
                                     for k, (_, clean, _, _) in zip(keys, items)])
                upsert = upsert.on_conflict_do_update(
                    index_elements=[ChainBuyer.chain_id, ChainBuyer.buyer_key],
                    set_={"qty": ChainBuyer.qty + upsert.excluded.qty},
                    where=ChainBuyer.qty + upsert.excluded.qty <= chain.per_person_limit)
                held = set(s.scalars(upsert.returning(ChainBuyer.buyer_key)))
                if len(held) != len(keys):
                    sp.rollback()
                    return None
                left = s.scalar(update(Chain).where(Chain.id == chain.id, Chain.status == "open",
                                                    Chain.stock_left >= total, Chain.deadline > now)
                                .values(stock_left=Chain.stock_left - total).returning(Chain.stock_left)
                                .execution_options(synchronize_session=False))
                if left is None:
                    sp.rollback()
                    return None
                rows = [dict(chain_id=chain.id, order_token=secrets.token_urlsafe(12), request_id=clean[3],
                             buyer_key=k, name=clean[0], phone_tail=clean[1], qty=clean[2],
                             chat_id=chat if chat and groups.get(chat) == chain.store_code else None,
                             store_code=chain.store_code, status="active", created_at=when)
                        for k, (_, clean, chat, when) in zip(keys, items)]
                s.execute(insert(ChainOrder), rows)
        except IntegrityError:  # a request_id already placed: the one-by-one path replays it
            return None
        placed, running = [], left + total
        for row in rows:
            running -= row["qty"]
            placed.append(PlacedOrder(ChainOrder(**row), running, True))
        return placed, self._milestones(s, chain, left, now)

    def _milestones(self, s: Session, chain: Chain, left: int, now: datetime) -> bool:
        """Half sold and sold out: tell the clerk once each (a conditional UPDATE decides who tells)."""
        outbox = OutboxRepo(s, self.clock)
        told = False
        if left <= chain.stock_total // 2:
            if s.scalar(update(Chain).where(Chain.id == chain.id, Chain.notified_half.is_(False))
                        .values(notified_half=True).returning(Chain.id).execution_options(synchronize_session=False)):
                told = outbox.add("send", f"chain_half:{chain.id}", _text(chain.clerk,
                                  f"【团购过半】{chain.title}：已报名 {chain.stock_total - left}/{chain.stock_total} 份。"))
        if left == 0:
            if s.scalar(update(Chain).where(Chain.id == chain.id, Chain.notified_sold_out.is_(False))
                        .values(notified_sold_out=True).returning(Chain.id)
                        .execution_options(synchronize_session=False)):
                told = outbox.add("send", f"chain_sold_out:{chain.id}", _text(chain.clerk,
                                  f"【团购已抢完】{chain.title}：{chain.stock_total} 份全部报满，"
                                  f"截单时间 {chain.deadline.astimezone(self.clock.tz):%m-%d %H:%M} 会把备货名单发给你。"))
        return told

    def cancel(self, s: Session, token: str, order_token: str, now: datetime) -> int:
        """Cancel before the deadline; the stock and the person's allowance come back. Returns stock left."""
        chain = s.scalar(select(Chain).where(Chain.token == token))
        if chain is None:
            raise ChainNotFound("没有这个团购。")
        order = s.scalar(select(ChainOrder).where(ChainOrder.order_token == order_token,
                                                  ChainOrder.chain_id == chain.id))
        if order is None:
            raise ChainNotFound("没有这个报名。")
        if chain.status != "open" or now >= chain.deadline:
            raise ChainClosed("已经截单，不能取消了，请联系店员。", remaining=chain.stock_left)
        qty = s.scalar(update(ChainOrder).where(ChainOrder.id == order.id, ChainOrder.status == "active")
                       .values(status="cancelled", cancelled_at=now).returning(ChainOrder.qty)
                       .execution_options(synchronize_session=False))
        if qty is None:  # already cancelled: nothing to give back twice
            return chain.stock_left
        s.execute(update(ChainBuyer).where(ChainBuyer.chain_id == chain.id, ChainBuyer.buyer_key == order.buyer_key)
                  .values(qty=ChainBuyer.qty - qty))
        return s.scalar(update(Chain).where(Chain.id == chain.id).values(stock_left=Chain.stock_left + qty)
                        .returning(Chain.stock_left).execution_options(synchronize_session=False))

    # -- closing ----------------------------------------------------------------------------
    def close(self, s: Session, chain: Chain, reason: str, now: datetime) -> bool:
        """Close once; the clerk gets the pick list. False when it was already closed."""
        closed = s.scalar(update(Chain).where(Chain.id == chain.id, Chain.status == "open")
                          .values(status="closed", closed_at=now, closed_reason=reason).returning(Chain.id)
                          .execution_options(synchronize_session=False))
        if not closed:
            return False
        OutboxRepo(s, self.clock).add("send", f"chain_picklist:{chain.id}",
                                             _text(chain.clerk, self.pick_list(s, chain, reason)))
        return True

    def close_due(self, s: Session, now: datetime) -> list[Chain]:
        due = list(s.scalars(select(Chain).where(Chain.status == "open", Chain.deadline <= now)))
        return [c for c in due if self.close(s, c, "deadline", now)]

    def active_orders(self, s: Session, chain: Chain) -> list[ChainOrder]:
        return list(s.scalars(select(ChainOrder).where(ChainOrder.chain_id == chain.id, ChainOrder.status == "active")
                              .order_by(ChainOrder.id)))

    def pick_list(self, s: Session, chain: Chain, reason: str = "deadline") -> str:
        orders = self.active_orders(s, chain)
        names = {g.chat_id: g.name for g in self.groups(s, chain.store_code)}
        sold = sum(o.qty for o in orders)
        head = (f"【备货名单】{chain.title}（{'到点截单' if reason == 'deadline' else '已提前截单'}）\n"
                f"共 {len(orders)} 人、{sold} 份，金额 {yuan(sold * chain.price_cents)} 元；剩余 {chain.stock_total - sold} 份")
        lines = [f"{i}. {mask_name(o.name)} 尾号{o.phone_tail} ×{o.qty} {names.get(o.chat_id, '') if o.chat_id else ''}"
                 .rstrip() for i, o in enumerate(orders, 1)]
        return fit_lines(head, lines, f"完整表格：{self.csv_link(chain)}")



