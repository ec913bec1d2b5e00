"""Chains: open, order, cancel, close. Stock and the per-person limit change only by conditional
UPDATE … WHERE … RETURNING in one transaction (never read-then-write; SELECT FOR UPDATE alone is
ignored by SQLite), so no concurrency on SQLite or PostgreSQL can oversell or overbuy."""

from __future__ import annotations

import re
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy import and_, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session

from bot.chains.parse import OpenChainArgs
from bot.db.models import Chain, ChainBuyer, ChainOrder, GroupChat, Store
from bot.links import CSV, LinkSigner, Verdict
from bot.messaging.outbox import OutboxRepo, insert_ignore
from bot.text import app_text as _text, fit_lines, mask_name, yuan


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


class RequestReused(ChainError):
    status = 409


# What a database raises for a value it will not store (a lone surrogate fails to encode before it is
# sent, a NUL is refused by PostgreSQL): that order fails, never the batch it shares a transaction with.
REFUSED_VALUES = (DataError, UnicodeError)


@dataclass
class Voided:
    number: int
    order: ChainOrder | None
    outcome: str            # voided (now) | already_voided | cancelled (by the member) | missing


class CleanOrder(NamedTuple):
    """An order's fields once each is what it must be (validate)."""
    name: str
    phone_tail: str
    qty: int
    request_id: str


class SignUp(NamedTuple):
    """A valid sign-up (clean_sign_up) not yet checked against its chain (Chains.check_many)."""
    token: str
    order: CleanOrder
    chat_id: str | None
    at: datetime


class OrderRequest(NamedTuple):
    """A checked sign-up for the order writer: which chain, what, from which group, when."""
    chain: Chain
    order: CleanOrder
    chat_id: str | None
    at: datetime


@dataclass
class PlacedOrder:
    order_token: str        # the order's own (cancels it), not a ChainOrder: take_many builds none
    qty: int
    remaining: int
    created: bool
    notified: bool = False   # a message to the clerk was queued (half sold, sold out)


NAME_HINT = "请填写称呼（1-20个字）。"
ASCII_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")       # chat ids, request ids, URL tokens: never other scripts
ZWJ = "\u200d"                                          # joins emoji sequences; other format characters are refused
# Categories a name may not contain: controls, surrogates (a JSON "\ud800" decodes to one and then
# fails at the database), private use, unassigned, line/paragraph separators. Format characters (Cf:
# bidi controls U+202A-202E, U+2066-2069, U+200E/F, zero-width space, BOM) are refused too, but ZWJ.
REFUSED = frozenset(("Cc", "Cs", "Co", "Cn", "Zl", "Zp"))
ORDER_STATUS_ZH = {"active": "有效", "cancelled": "已取消", "voided": "已作废"}


def clean_name(value) -> str:
    """Printable text of 1-20 characters with at least one visible one; runs of spaces become one."""
    if not isinstance(value, str):
        raise InvalidOrder(NAME_HINT)
    name = unicodedata.normalize("NFC", value.strip())
    for ch in name:
        cat = unicodedata.category(ch)
        if cat in REFUSED or (cat == "Cf" and ch != ZWJ):
            raise InvalidOrder("称呼里有不能显示的字符，请重新输入。")
    name = " ".join(name.split())                       # the ideographic space too
    if not 1 <= len(name) <= 20 or not any(unicodedata.category(ch)[0] in "LNPS" for ch in name):
        raise InvalidOrder(NAME_HINT)
    return name


def clean_chat_id(value) -> str | None:
    """The `g` of a group's link: a WeCom chat id (ASCII), or nothing."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not ASCII_TOKEN.fullmatch(value):
        raise InvalidOrder("群链接不完整，请从群里的链接重新打开。")
    return value


def buyer_key(name: str, phone_tail: str) -> str:
    """One person for the per-person limit: the name without case, and the phone tail."""
    return f"{name.lower()}|{phone_tail}"


def same_request(existing: ChainOrder, name: str, phone_tail: str, qty: int) -> None:
    """A replayed request_id is answered with its order only for the same buyer and quantity: its
    order_token cancels that order, so another person's name must not fetch it."""
    if existing.buyer_key != buyer_key(name, phone_tail) or existing.qty != qty:
        raise RequestReused("这个提交已用过，请刷新页面后重新填写提交。", error="request_reused")


def validate(name, phone_tail, qty, request_id) -> CleanOrder:
    """Each field as what it is: ASCII digits only where digits are meant (`\\d` and int() also take
    "١٢٣٤" and "１２"), and the right JSON type (a list is not a name)."""
    name = clean_name(name)
    if not isinstance(phone_tail, str) or not re.fullmatch(r"[0-9]{4}", phone_tail.strip()):
        raise InvalidOrder("请填写手机号后4位数字。")
    if isinstance(qty, str) and re.fullmatch(r"[0-9]{1,4}", qty.strip()):
        qty = int(qty)
    elif not isinstance(qty, int) or isinstance(qty, bool):
        raise InvalidOrder("份数要填整数。")
    if not isinstance(request_id, str) or not re.fullmatch(r"[A-Za-z0-9_-]{8,64}", request_id.strip()):
        raise InvalidOrder("请求编号无效，请刷新页面再提交。")
    return CleanOrder(name, phone_tail.strip(), qty, request_id.strip())


def clean_sign_up(token: str, name, phone_tail, qty, request_id) -> CleanOrder:
    """What a sign-up can be refused for before any read: a token that cannot be a chain's, a field
    that is not what it must be."""
    if not ASCII_TOKEN.fullmatch(token):   # "%00" in a URL is a NUL PostgreSQL refuses: not a chain
        raise ChainNotFound("没有这个团购。")
    return validate(name, phone_tail, qty, request_id)


class Chains:
    def __init__(self, public_base_url: str, links: LinkSigner, clock, csv_link_days: int = 7):
        self.base = public_base_url.rstrip("/")
        self.links = links
        self.clock = clock
        self.csv_link_days = csv_link_days

    def link(self, chain: Chain, chat_id: str | None = None) -> str:
        return f"{self.base}/c/{chain.token}" + (f"?g={chat_id}" if chat_id else "")

    def csv_link(self, chain: Chain) -> str:
        """The chain's clerk's pick list as CSV, for csv_link_days from now (名单 <id> mints a fresh one)."""
        sig = self.links.sign(CSV, (chain.token, chain.clerk), self.clock.now() + timedelta(days=self.csv_link_days))
        return f"{self.base}/c/{chain.token}/orders.csv?u={chain.clerk}&sig={sig}"

    def check_csv(self, token: str, userid: str, sig: str) -> Verdict:
        return self.links.verify(CSV, (token, userid), sig)

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
    def check_many(self, reads: Session, sign_ups: list[SignUp]) -> list[tuple[Chain, ChainOrder | None] | ChainError]:
        """Everything that can be answered from a read, without the write lock, for a batch of valid
        sign-ups (clean_sign_up) in one round trip: an unknown, closed or not yet open chain, a
        quantity over the limit, a replayed request, and a chain visibly sold out. Per sign-up its
        chain and the order its request_id already placed (a retried submit), or the error to answer.
        A fast path only: `take` decides by conditional UPDATE."""
        tokens = {su.token for su in sign_ups}
        request_ids = {su.order.request_id for su in sign_ups}
        chains: dict[str, Chain] = {}
        placed: dict[tuple[int, str], ChainOrder] = {}
        for chain, order in reads.execute(select(Chain, ChainOrder).outerjoin(ChainOrder, and_(
                ChainOrder.chain_id == Chain.id, ChainOrder.request_id.in_(request_ids)))
                .where(Chain.token.in_(tokens))):
            chains[chain.token] = chain
            if order is not None:
                placed[(chain.id, order.request_id)] = order
        checked: list = []
        for su in sign_ups:
            chain = chains.get(su.token)
            try:
                if chain is None:
                    raise ChainNotFound("没有这个团购。")
                existing = placed.get((chain.id, su.order.request_id))
                self._judge(chain, existing, su.order, su.at)
                checked.append((chain, existing))
            except ChainError as e:
                checked.append(e)
        return checked

    def _judge(self, chain: Chain, existing: ChainOrder | None, clean: CleanOrder, now: datetime) -> None:
        """check_many's verdict on one sign-up: raises what to answer, returns when `take` may try."""
        if existing is not None:  # the same answer, nothing taken twice; but only to the same buyer
            same_request(existing, clean.name, clean.phone_tail, clean.qty)
            return
        if chain.status != "open" or now >= chain.deadline:
            raise ChainClosed("这个团购已经截单了。", remaining=chain.stock_left)
        if now < chain.opens_at:
            raise NotOpenYet(f"还没开始，{chain.opens_at.astimezone(self.clock.tz):%m-%d %H:%M} 开团。",
                             remaining=chain.stock_left)
        if not 1 <= clean.qty <= chain.per_person_limit:
            raise InvalidOrder(f"每人限购 {chain.per_person_limit} 份，请填 1 到 {chain.per_person_limit}。")
        if chain.stock_left == 0:
            raise SoldOut("已经抢完了。", remaining=0)

    def take(self, s: Session, chain: Chain, name: str, phone_tail: str, qty: int, request_id: str,
             chat_id: str | None, now: datetime) -> PlacedOrder:
        """One write transaction (the caller commits); any ChainError leaves nothing behind. The
        chain row, which every order contends for, is updated last, so its lock is held briefly."""
        key = buyer_key(name, phone_tail)
        insert_ignore(s, ChainBuyer, dict(chain_id=chain.id, buyer_key=key, qty=0))
        held = s.scalar(update(ChainBuyer).where(
            ChainBuyer.chain_id == chain.id, ChainBuyer.buyer_key == key,
            ChainBuyer.qty + qty <= chain.per_person_limit).values(qty=ChainBuyer.qty + qty).returning(ChainBuyer.qty))
        if held is None:
            had = s.scalar(select(ChainBuyer.qty).where(ChainBuyer.chain_id == chain.id,
                                                        ChainBuyer.buyer_key == key)) or 0
            raise OverLimit(f"每人限购 {chain.per_person_limit} 份，你已报名 {had} 份，最多还能报 "
                            f"{max(0, chain.per_person_limit - had)} 份。",
                            remaining=chain.stock_left, allowed=max(0, chain.per_person_limit - had))
        group = s.get(GroupChat, chat_id) if chat_id else None
        order = ChainOrder(chain_id=chain.id, order_token=secrets.token_urlsafe(12), request_id=request_id,
                           buyer_key=key, name=name, phone_tail=phone_tail, qty=qty,
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
        return PlacedOrder(order.order_token, qty, left, True, notified=self._milestones(s, chain, left, now))

    @staticmethod
    def sold_out(left: int) -> SoldOut:
        return SoldOut("已经抢完了。" if not left else f"只剩 {left} 份了，请少报一些。", remaining=left)

    def take_many(self, s: Session, items: list[OrderRequest]) -> tuple[list[PlacedOrder], bool] | None:
        """Several orders for one chain in three statements: the buyers' holds in one conditional upsert,
        the stock for all of them in one conditional UPDATE, the orders in one INSERT. All or nothing:
        None (and nothing changed) when any order would fail or the batch is not simple (a buyer or a
        request twice), and the caller takes them one by one for precise answers. Near a sell-out that
        is the common case; before it, a rush of sign-ups costs three statements per batch, not seven
        per order."""
        chain = items[0].chain
        now = max(it.at for it in items)
        keys = [buyer_key(it.order.name, it.order.phone_tail) for it in items]
        if len(set(keys)) != len(keys) or len({it.order.request_id for it in items}) != len(items):
            return None
        total = sum(it.order.qty for it in items)
        dialect = s.get_bind().dialect.name
        ins = (pg_insert if dialect == "postgresql" else sqlite_insert)(ChainBuyer)
        chats = {it.chat_id for it in items if it.chat_id}
        try:
            with s.begin_nested() as sp:
                groups = dict(s.execute(select(GroupChat.chat_id, GroupChat.store_code)
                                        .where(GroupChat.chat_id.in_(chats))).all()) if chats else {}
                upsert = ins.on_conflict_do_update(
                    index_elements=[ChainBuyer.chain_id, ChainBuyer.buyer_key],
                    set_={"qty": ChainBuyer.qty + ins.excluded.qty},
                    where=ChainBuyer.qty + ins.excluded.qty <= chain.per_person_limit)
                # the rows as parameters, not in the statement: one compiled form for any batch size
                held = set(s.scalars(upsert.returning(ChainBuyer.buyer_key),
                                     [dict(chain_id=chain.id, buyer_key=k, qty=it.order.qty)
                                      for k, it in zip(keys, items)]))
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
                rows = [dict(chain_id=chain.id, order_token=secrets.token_urlsafe(12),
                             request_id=it.order.request_id, buyer_key=k, name=it.order.name,
                             phone_tail=it.order.phone_tail, qty=it.order.qty,
                             chat_id=it.chat_id if it.chat_id and groups.get(it.chat_id) == chain.store_code else None,
                             store_code=chain.store_code, status="active", created_at=it.at)
                        for k, it in zip(keys, items)]
                s.execute(insert(ChainOrder), rows)
        except IntegrityError:  # a request_id already placed: the one-by-one path replays it
            return None
        except REFUSED_VALUES:  # a value the database will not store: one by one, so it fails alone
            return None
        placed, running = [], left + total
        for row in rows:
            running -= row["qty"]
            placed.append(PlacedOrder(row["order_token"], row["qty"], running, True))
        return placed, self._milestones(s, chain, left, now)

    def _milestones(self, s: Session, chain: Chain, left: int, now: datetime) -> bool:
        """Half sold and sold out: tell the clerk once each (a conditional UPDATE decides who tells)."""
        outbox = OutboxRepo(s, self.clock)
        told = False
        if left <= chain.stock_total // 2:
            if s.scalar(update(Chain).where(Chain.id == chain.id, Chain.notified_half.is_(False))
                        .values(notified_half=True).returning(Chain.id).execution_options(synchronize_session=False)):
                told = outbox.add("app_message", f"chain_half:{chain.id}", _text(chain.clerk,
                                  f"【团购过半】{chain.title}：已报名 {chain.stock_total - left}/{chain.stock_total} 份。"))
        if left == 0:
            if s.scalar(update(Chain).where(Chain.id == chain.id, Chain.notified_sold_out.is_(False))
                        .values(notified_sold_out=True).returning(Chain.id)
                        .execution_options(synchronize_session=False)):
                told = outbox.add("app_message", f"chain_sold_out:{chain.id}", _text(chain.clerk,
                                  f"【团购已抢完】{chain.title}：{chain.stock_total} 份全部报满，"
                                  f"截单时间 {chain.deadline.astimezone(self.clock.tz):%m-%d %H:%M} 会把备货名单发给你。"))
        return told

    def cancel(self, s: Session, token: str, order_token: str, now: datetime) -> int:
        """Cancel before the deadline; the stock and the person's allowance come back. Returns stock left."""
        chain = s.scalar(select(Chain).where(Chain.token == token)) if ASCII_TOKEN.fullmatch(token) else None
        if chain is None:
            raise ChainNotFound("没有这个团购。")
        order = None
        if ASCII_TOKEN.fullmatch(order_token):
            order = s.scalar(select(ChainOrder).where(ChainOrder.order_token == order_token,
                                                      ChainOrder.chain_id == chain.id))
        if order is None:
            raise ChainNotFound("没有这个报名。")
        if chain.status != "open" or now >= chain.deadline:
            raise ChainClosed("已经截单，不能取消了，请联系店员。", remaining=chain.stock_left)
        qty = s.scalar(update(ChainOrder).where(ChainOrder.id == order.id, ChainOrder.status == "active")
                       .values(status="cancelled", cancelled_at=now).returning(ChainOrder.qty)
                       .execution_options(synchronize_session=False))
        if qty is None:  # already cancelled (or voided): nothing to give back twice
            return chain.stock_left
        return self._give_back(s, chain, order, qty)

    def _give_back(self, s: Session, chain: Chain, order: ChainOrder, qty: int) -> int:
        """The stock and the person's allowance of an order that just left 'active'. Returns stock left."""
        s.execute(update(ChainBuyer).where(ChainBuyer.chain_id == chain.id, ChainBuyer.buyer_key == order.buyer_key)
                  .values(qty=ChainBuyer.qty - qty))
        return s.scalar(update(Chain).where(Chain.id == chain.id).values(stock_left=Chain.stock_left + qty)
                        .returning(Chain.stock_left).execution_options(synchronize_session=False))

    def void(self, s: Session, chain: Chain, numbers: list[int], now: datetime) -> tuple[list[Voided], int]:
        """A clerk voids orders (fake names, a script) by their numbers; open or closed chain alike. Each
        leaves 'active' by conditional UPDATE, so a repeat or a race with the member's own cancel gives
        nothing back twice. Returns what happened to each number, and the stock left."""
        by_number = dict(self.numbered(s, chain))
        done: list[Voided] = []
        for n in numbers:
            order = by_number.get(n)
            if order is None:
                done.append(Voided(n, None, "missing"))
                continue
            qty = s.scalar(update(ChainOrder).where(ChainOrder.id == order.id, ChainOrder.status == "active")
                           .values(status="voided", cancelled_at=now).returning(ChainOrder.qty)
                           .execution_options(synchronize_session=False))
            if qty is None:
                status = s.scalar(select(ChainOrder.status).where(ChainOrder.id == order.id))
                done.append(Voided(n, order, "already_voided" if status == "voided" else status))
                continue
            self._give_back(s, chain, order, qty)
            done.append(Voided(n, order, "voided"))
        return done, s.scalar(select(Chain.stock_left).where(Chain.id == chain.id))

    # -- closing ----------------------------------------------------------------------------
    def close(self, s: Session, chain: Chain, reason: str, now: datetime) -> bool:
        """Close once; the clerk gets the pick list. False when it was already closed."""
        closed = s.scalar(update(Chain).where(Chain.id == chain.id, Chain.status == "open")
                          .values(status="closed", closed_at=now, closed_reason=reason).returning(Chain.id)
                          .execution_options(synchronize_session=False))
        if not closed:
            return False
        OutboxRepo(s, self.clock).add("app_message", f"chain_picklist:{chain.id}",
                                             _text(chain.clerk, self.pick_list(s, chain, reason)))
        return True

    def close_due(self, s: Session, now: datetime) -> list[Chain]:
        due = list(s.scalars(select(Chain).where(Chain.status == "open", Chain.deadline <= now)))
        return [c for c in due if self.close(s, c, "deadline", now)]

    def numbered(self, s: Session, chain: Chain, statuses: tuple[str, ...] | None = None
                 ) -> list[tuple[int, ChainOrder]]:
        """The chain's orders with their numbers (序号): each one's place among all the chain's orders,
        as in the CSV. Cancelling or voiding renumbers nothing, so `作废 12-3` keeps meaning the same
        order while a clerk works down the list."""
        orders = s.scalars(select(ChainOrder).where(ChainOrder.chain_id == chain.id).order_by(ChainOrder.id))
        return [(i, o) for i, o in enumerate(orders, 1) if statuses is None or o.status in statuses]

    def active_orders(self, s: Session, chain: Chain) -> list[ChainOrder]:
        return list(s.scalars(select(ChainOrder).where(ChainOrder.chain_id == chain.id, ChainOrder.status == "active")
                              .order_by(ChainOrder.id)))

    def pick_list(self, s: Session, chain: Chain, reason: str = "deadline") -> str:
        numbered = self.numbered(s, chain, ("active", "voided"))
        orders = [o for _, o in numbered if o.status == "active"]
        names = {g.chat_id: g.name for g in self.groups(s, chain.store_code)}
        sold = sum(o.qty for o in orders)
        voided = len(numbered) - len(orders)
        head = (f"【备货名单】{chain.title}（{'到点截单' if reason == 'deadline' else '已提前截单'}）\n"
                f"共 {len(orders)} 人、{sold} 份，金额 {yuan(sold * chain.price_cents)} 元；剩余 {chain.stock_total - sold} 份"
                + (f"；已作废 {voided} 单，不计入" if voided else ""))
        lines = [f"{i}. {mask_name(o.name)} 尾号{o.phone_tail} ×{o.qty} {names.get(o.chat_id, '') if o.chat_id else ''}"
                 .rstrip() for i, o in numbered if o.status == "active"]
        return fit_lines(head, lines, f"完整表格：{self.csv_link(chain)}\n假报名可作废：作废 {chain.id}-序号")



