"""开团 open · 团购 chains · 名单 list <id> · 截单 close <id> · 作废 void <order>: a clerk's own stores only."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import select

from bot.chains.parse import CommandSyntaxError, parse_open_args
from bot.chains.service import Chains
from bot.text import mask_name, yuan
from bot.commands.router import Clerk, CommandRouter, Reply
from bot.db.models import Chain
from bot.messaging.uow import UnitOfWork

router = CommandRouter()


def _own_chain(uow: UnitOfWork, clerk: Clerk, args: str) -> Chain | Reply:
    ref = args.strip().lstrip("#")
    if not ref.isdigit():
        return Reply("请写团购编号，例如：名单 12（编号见“团购”命令）。")
    chain = uow.session.get(Chain, int(ref))
    if chain is None or chain.store_code not in clerk.store_codes:
        return Reply(f"没有你门店的 {ref} 号团购。发“团购”看看你门店的团购。")
    return chain


@router.command("开团", "open", summary="开一个团购接龙，例如：开团 阳光玫瑰葡萄 39.9元 200份 每人限2 截止周六18:00")
def open_chain(args: str, clerk: Clerk, uow: UnitOfWork, now: datetime, tz: ZoneInfo, chains: Chains,
               sidebar_links) -> Reply:
    try:
        a = parse_open_args(args, now, tz)
    except CommandSyntaxError as e:
        return Reply(str(e))
    if a.store_code:
        store = next((s for s in clerk.stores if s.code == a.store_code), None)
        if store is None:
            return Reply(f"门店 {a.store_code} 不是你的门店。")
    elif len(clerk.stores) == 1:
        store = clerk.stores[0]
    else:
        return Reply("你管理多个门店，请加上门店编号，例如 门店" + clerk.stores[0].code + "：" +
                     "、".join(f"{s.code}（{s.name}）" for s in clerk.stores))
    chain = chains.open(uow.session, store, clerk.userid, a, now)
    groups = chains.groups(uow.session, store.code)
    lines = [f"已开团 #{chain.id}：{chain.title} ¥{yuan(chain.price_cents)}，{chain.stock_total}份，"
             f"每人限{chain.per_person_limit}份，截止 {chain.deadline.astimezone(tz):%m-%d %H:%M}",
             f"链接：{chains.link(chain)}"]
    if groups:
        lines.append(f"在客户群的聊天工具栏打开，一键把接龙发到群里：{sidebar_links.chain_link(chain.token, clerk.userid, chain.deadline)}")
        lines.append("或手动发各群的专属链接（报名会记到对应的群）：")
        lines += [f"· {g.name or g.chat_id}：{chains.link(chain, g.chat_id)}" for g in groups]
    return Reply("\n".join(lines))


@router.command("团购", "chains", summary="我门店进行中的团购：已报/总份数")
def list_chains(clerk: Clerk, uow: UnitOfWork, tz: ZoneInfo, chains: Chains) -> Reply:
    open_ = list(uow.session.scalars(select(Chain).where(Chain.store_code.in_(clerk.store_codes),
                                                         Chain.status == "open").order_by(Chain.deadline)))
    if not open_:
        return Reply("你门店现在没有进行中的团购。发“开团”开一个。")
    return Reply("进行中的团购：\n" + "\n".join(
        f"#{c.id} {c.title}：已报 {c.stock_total - c.stock_left}/{c.stock_total} 份，截止 "
        f"{c.deadline.astimezone(tz):%m-%d %H:%M}\n  {chains.link(c)}" for c in open_))


@router.command("名单", "list", summary="某个团购当前的报名名单，例如：名单 12")
def list_orders(args: str, clerk: Clerk, uow: UnitOfWork, chains: Chains) -> Reply:
    chain = _own_chain(uow, clerk, args)
    if isinstance(chain, Reply):
        return chain
    # Numbered as in the CSV and as 作废 takes them; voided ones stay in sight, marked.
    shown = chains.numbered(uow.session, chain, ("active", "voided"))
    orders = [o for _, o in shown if o.status == "active"]
    if not shown:
        return Reply(f"#{chain.id} {chain.title} 还没有人报名。")
    lines = [f"#{chain.id} {chain.title}：{len(orders)}人 {sum(o.qty for o in orders)}份"]
    lines += [f"{n}. {mask_name(o.name)} 尾号{o.phone_tail} ×{o.qty}" + (" 已作废" if o.status == "voided" else "")
              for n, o in shown[:50]]
    if len(shown) > 50:
        lines.append(f"……共 {len(shown)} 条，完整名单：{chains.csv_link(chain)}")
    lines.append(f"假报名可作废：发“作废 {chain.id}-序号”（序号是每行开头的数字）")
    return Reply("\n".join(lines))


@router.command("截单", "close", summary="提前截单，备货名单会发给开团的店员，例如：截单 12")
def close_chain(args: str, clerk: Clerk, uow: UnitOfWork, now: datetime, chains: Chains) -> Reply:
    chain = _own_chain(uow, clerk, args)
    if isinstance(chain, Reply):
        return chain
    if not chains.close(uow.session, chain, "early", now):
        return Reply(f"#{chain.id} {chain.title} 已经截单了。")
    return Reply(f"已截单 #{chain.id} {chain.title}，备货名单马上发给 {chain.clerk}。")


MAX_VOID = 100
VOID_EXAMPLE = "例如：作废 12-3，或一次几单：作废 12-3 12-5、作废 12-3~9（序号见“名单 12”）"


@dataclass(frozen=True)
class VoidArgs:
    orders: tuple[tuple[int, int], ...]     # (chain id, order number), in the order written, once each


def parse_void_args(text: str) -> VoidArgs:
    """`12-3`, several (`12-3 12-5`, `12-3,5,8`: a bare number continues the chain before it) or a
    range (`12-3~9`). Full-width digits and signs from a phone keyboard count as ASCII ones."""
    text = unicodedata.normalize("NFKC", text).replace("#", "")
    wanted: list[tuple[int, int]] = []
    chain_id = None
    for part in re.split(r"[\s,、;；]+", text.strip()):
        if not part:
            continue
        m = re.fullmatch(r"(?:([0-9]{1,9})-)?([0-9]{1,9})(?:[~至到]([0-9]{1,9}))?", part)
        if not m or (m.group(1) is None and chain_id is None):
            raise CommandSyntaxError(f"“{part}”看不懂：请写 团购编号-序号。{VOID_EXAMPLE}")
        chain_id = int(m.group(1)) if m.group(1) else chain_id
        first, last = int(m.group(2)), int(m.group(3) or m.group(2))
        if first < 1 or last < first:
            raise CommandSyntaxError(f"“{part}”的序号不对：从 1 开始，范围要从小到大。")
        if len(wanted) + last - first + 1 > MAX_VOID:
            raise CommandSyntaxError(f"一次最多作废 {MAX_VOID} 单，请分几次发。")
        wanted += [(chain_id, n) for n in range(first, last + 1)]
    if not wanted:
        raise CommandSyntaxError(f"请写要作废的报名。{VOID_EXAMPLE}")
    return VoidArgs(tuple(dict.fromkeys(wanted)))


OUTCOME_ZH = {"already_voided": "之前已作废", "cancelled": "顾客已自己取消", "missing": "没有这一单"}


@router.command("作废", "void", summary="作废假报名，库存退回，例如：作废 12-3（团购编号-序号，序号见“名单”）")
def void_orders(args: str, clerk: Clerk, uow: UnitOfWork, now: datetime, chains: Chains) -> Reply:
    try:
        a = parse_void_args(args)
    except CommandSyntaxError as e:
        return Reply(str(e))
    lines = []
    for chain_id in dict.fromkeys(cid for cid, _ in a.orders):
        chain = _own_chain(uow, clerk, str(chain_id))
        if isinstance(chain, Reply):
            lines.append(chain.text)
            continue
        done, left = chains.void(uow.session, chain, [n for cid, n in a.orders if cid == chain_id], now)
        voided = [d for d in done if d.outcome == "voided"]
        if voided:
            lines.append(f"已作废 #{chain.id} {chain.title} {len(voided)} 单，退回 {sum(d.order.qty for d in voided)} 份，"
                         f"现剩 {left} 份：")
            lines += [f"· {chain.id}-{d.number} {mask_name(d.order.name)} 尾号{d.order.phone_tail} ×{d.order.qty}"
                      for d in voided]
        lines += [f"· {chain.id}-{d.number}：{OUTCOME_ZH[d.outcome]}，未改动" for d in done if d.outcome != "voided"]
    return Reply("\n".join(lines))
