"""Handing a clerk's customers and groups of one store to a successor.

A handover is a set of outbox rows sharing a prefix `hid` (no table of its own: the rows are the
state, and they commit with the change that decided them):

    {hid}:plan              get_unassigned_list (resigned only): whose customers, which successor
    {hid}:c{n}              transfer_customer, ≤ 100 customers (resigned/ or on-job)
    {hid}:g{n}              groupchat_transfer / onjob_transfer, ≤ 100 groups
    {hid}:r{n}              the n-th look at transfer_result, until every customer is taken over,
                            refused or over the successor's limit

A transfer is not idempotent (WeCom counts them: two per customer and group in 90 days, 300 groups
a day per original owner), so a row whose answer was lost is reconciled with transfer_result or
the group's owner before it is sent again (bot.staff.executors); each row runs once per key, so a
restart in the middle transfers nothing twice, and nothing the plan queued is lost.

resigned: hid = `resigned:{userid}:{store}`, decided when WeCom says the clerk is gone (the
change_contact callback, or `sync`). on-job: hid = `onjob:{userid}:{store}:{digest}`, only on
`wecom-bot handover … --apply`.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bot.clock import Clock
from bot.db.models import FunnelFact, GroupChat, Outbox, Store
from bot.messaging.outbox import OutboxRepo
from bot.wecom.api.transfer import MAX_CHATS, MAX_CUSTOMERS

log = logging.getLogger(__name__)

GROUPS_PER_DAY = 300            # 「同一个人的群，限制每天最多分配300个给新群主」
FIRST_LOOK = timedelta(hours=1)  # refusals show early; the takeover itself takes 24 h
LOOK_EVERY = timedelta(hours=4)
MAX_LOOKS = 13                  # ≈ 49 h: past the 24 h takeover with room for WeCom's lag
# what the customer reads when an on-job transfer is accepted (≤ 200 characters)
ONJOB_SUCCESS_MSG = "您好，原门店店员已调岗，之后由我继续为您服务，门店福利和团购照常，有需要随时找我。"

# outbox kinds (the WeCom endpoint each calls)
PLAN = "get_unassigned_list"
CUSTOMERS = {"resigned": "resigned_transfer_customer", "onjob": "transfer_customer"}
RESULTS = {"resigned": "resigned_transfer_result", "onjob": "transfer_result"}
GROUPS = {"resigned": "groupchat_transfer", "onjob": "onjob_transfer"}


def resigned_hid(userid: str, store_code: str) -> str:
    return f"resigned:{userid}:{store_code}"


def recorded_customers(s: Session, userid: str, store_code: str) -> list[str]:
    """Customers who added `userid` through the store's QR (the bot's own records), minus those who
    deleted the clerk since."""
    added = set(s.scalars(select(FunnelFact.external_userid).where(
        FunnelFact.kind == "add", FunnelFact.userid == userid, FunnelFact.store_code == store_code)))
    deleted = set(s.scalars(select(FunnelFact.external_userid).where(
        FunnelFact.kind == "clerk_deleted", FunnelFact.userid == userid)))
    return sorted(added - deleted)


def customer_counts(s: Session, userids: list[str]) -> dict[str, int]:
    rows = s.execute(select(FunnelFact.userid, func.count(func.distinct(FunnelFact.external_userid)))
                     .where(FunnelFact.kind == "add", FunnelFact.userid.in_(userids))
                     .group_by(FunnelFact.userid)).all()
    counts = {u: 0 for u in userids}
    counts.update({u: n for u, n in rows})
    return counts


def pick_successor(s: Session, remaining: list[str], named: str | None, leaving: str) -> str | None:
    """The store's named successor if they still serve it, else its remaining clerk with the fewest
    customers (by the bot's records; ties by userid)."""
    pool = [c for c in remaining if c != leaving]
    if named and named in pool:
        return named
    if not pool:
        return None
    counts = customer_counts(s, pool)
    return min(pool, key=lambda c: (counts[c], c))


def groups_of(s: Session, userid: str, store_code: str, stores: list[str] | None = None) -> list[str]:
    """The store's groups this clerk still owns: recorded for the store, or behind its join way, or
    joined through its group QR. `stores`: every store of this handover; a group that more than one of
    them could claim goes to one only (the one it is recorded under, else the first whose join way
    holds it, else the first its members joined from), so no group is in two plans."""
    stores = sorted(set(stores or []) | {store_code})
    behind: dict[str, set[str]] = {}
    joined: dict[str, set[str]] = {}
    for code in stores:
        store = s.get(Store, code)
        behind[code] = set(store.join_way_chat_ids or []) if store else set()
        # members who joined through the store's group QR make a group the store's, whichever store the
        # owner is listed under now (a clerk who moved keeps groups full of the old store's customers)
        joined[code] = set(s.scalars(select(FunnelFact.chat_id).where(FunnelFact.kind == "join",
                                                                      FunnelFact.store_code == code).distinct()))

    def claimant(chat: str, recorded: str) -> str | None:
        if recorded in stores:
            return recorded
        return next((c for c in stores if chat in behind[c]), None) or next(
            (c for c in stores if chat in joined[c]), None)

    return sorted(c for c, code in s.execute(select(GroupChat.chat_id, GroupChat.store_code)
                                            .where(GroupChat.owner == userid))
                  if claimant(c, code) == store_code)


def batches(items: list[str], size: int) -> list[list[str]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def queue_transfers(s: Session, clock: Clock, *, hid: str, mode: str, handover: str, takeover: str,
                    store_code: str, customers: list[str], chats: list[str]) -> int:
    """The transfer rows of one handover, and its first look at the results. Groups past 300 a day
    wait for the next day (per original owner)."""
    outbox, now = OutboxRepo(s, clock), clock.now()
    common = {"hid": hid, "mode": mode, "handover_userid": handover, "takeover_userid": takeover,
              "store_code": store_code}
    n = 0
    for i, batch in enumerate(batches(sorted(customers), MAX_CUSTOMERS), start=1):
        payload = {**common, "external_userid": batch}
        if mode == "onjob":
            payload["transfer_success_msg"] = ONJOB_SUCCESS_MSG
        n += outbox.add(CUSTOMERS[mode], f"{hid}:c{i}", payload)
    for i, batch in enumerate(batches(sorted(chats), MAX_CHATS), start=1):
        day = (i - 1) * MAX_CHATS // GROUPS_PER_DAY
        n += outbox.add(GROUPS[mode], f"{hid}:g{i}", {**common, "chat_id_list": batch, "new_owner": takeover},
                        not_before=now + timedelta(days=day) if day else None)
    if customers:
        outbox.add(RESULTS[mode], f"{hid}:r1", {**common, "look": 1}, not_before=now + FIRST_LOOK)
    return n


def customer_rows(s: Session, hid: str) -> list[Outbox]:
    """Every transfer_customer row of a handover (re-queued leftovers included)."""
    return list(s.scalars(select(Outbox).where(Outbox.key.like(f"{hid}:c%"),
                                               Outbox.kind.in_(tuple(CUSTOMERS.values())))))


def onjob_in_flight(s: Session, userid: str, store_code: str) -> set[str]:
    """Customers of this clerk and store already in an on-job transfer row (not to be planned again)."""
    out: set[str] = set()
    for row in s.scalars(select(Outbox).where(Outbox.key.like(f"onjob:{userid}:{store_code}:%"),
                                              Outbox.kind == CUSTOMERS["onjob"])):
        if row.status in ("dead", "expired"):
            continue
        out |= set(row.payload.get("external_userid") or [])
    return out


def onjob_groups_in_flight(s: Session, userid: str, store_code: str) -> set[str]:
    out: set[str] = set()
    for row in s.scalars(select(Outbox).where(Outbox.key.like(f"onjob:{userid}:{store_code}:%"),
                                              Outbox.kind == GROUPS["onjob"])):
        if row.status not in ("dead", "expired"):
            out |= set(row.payload.get("chat_id_list") or [])
    return out


@dataclass
class HandoverPlan:
    """`wecom-bot handover CLERK --store CODE [--to CLERK]`: what --apply would do."""
    clerk: str
    store_code: str
    successor: str | None
    customers: list[str] = field(default_factory=list)
    chats: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)    # customers already in a transfer
    problems: list[str] = field(default_factory=list)   # why it cannot run (Chinese)

    @property
    def hid(self) -> str:
        digest = hashlib.sha1("|".join(self.customers + ["#"] + self.chats).encode()).hexdigest()[:10]
        return f"onjob:{self.clerk}:{self.store_code}:{digest}"

    def lines(self) -> list[str]:
        out = [f"交接 {self.clerk} 在 {self.store_code} 的客户和客户群 → {self.successor or '（无接替人）'}",
               f"  客户 {len(self.customers)} 位（在职转接，每位客户90天内最多2次，客户可拒绝）"]
        out += [f"    {c}" for c in self.customers[:20]]
        if len(self.customers) > 20:
            out.append(f"    ……还有 {len(self.customers) - 20} 位")
        out.append(f"  客户群 {len(self.chats)} 个")
        out += [f"    {c}" for c in self.chats]
        if self.skipped:
            out.append(f"  已在转接中、不再重复：{len(self.skipped)} 位客户")
        out += [f"  ！{p}" for p in self.problems]
        return out


def apply_plan(s: Session, clock: Clock, plan: HandoverPlan) -> int:
    if plan.problems or not plan.successor or not (plan.customers or plan.chats):
        return 0
    return queue_transfers(s, clock, hid=plan.hid, mode="onjob", handover=plan.clerk, takeover=plan.successor,
                           store_code=plan.store_code, customers=plan.customers, chats=plan.chats)


def handover_status(s: Session, prefix: str = "") -> list[dict]:
    """What the transfer rows say, per handover (for the CLI and the demo's summary)."""
    out: dict[str, dict] = {}
    q = select(Outbox).where(Outbox.kind.in_(tuple(CUSTOMERS.values()) + tuple(GROUPS.values())
                                             + tuple(RESULTS.values())))
    if prefix:
        q = q.where(Outbox.key.like(f"{prefix}%"))
    for row in s.scalars(q.order_by(Outbox.id)):
        p = row.payload
        h = out.setdefault(p["hid"], {"hid": p["hid"], "mode": p["mode"], "from": p["handover_userid"],
                                      "to": p["takeover_userid"], "store": p["store_code"], "customers": 0,
                                      "chats": 0, "chats_moved": 0, "statuses": {}, "pending_rows": 0})
        if row.status not in ("done", "dead", "expired"):
            h["pending_rows"] += 1
        if row.kind in CUSTOMERS.values():
            h["customers"] += len(p.get("external_userid") or [])
        elif row.kind in GROUPS.values():
            h["chats"] += len(p.get("chat_id_list") or [])
            if row.status == "done":
                h["chats_moved"] += len((row.result or {}).get("moved") or [])
        elif row.status == "done" and (row.result or {}).get("statuses") is not None:
            h["statuses"] = row.result["statuses"]
    return list(out.values())


def stamp(now: datetime) -> str:
    return f"{now:%Y%m%dT%H%M%S}"
