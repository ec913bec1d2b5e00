"""The staff outbox kinds: the contact way without a departed clerk, and the handover rows of
bot.staff.handover (plan, customer transfers, their results, group transfers).

Transfers are not idempotent at WeCom (they count against two per 90 days, 300 groups a day), so
each has a `reconcile`: after a lost answer the row reads transfer_result (customers) or
groupchat/get (groups) and takes what WeCom already did instead of calling again."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from bot.db.engine import reads_of
from bot.db.models import Outbox, Store
from bot.messaging.outbox import Executor, Outcome, OutboxRepo
from bot.provisioning.groups import set_group_owner, unassigned, unassigned_line
from bot.staff import handover as ho
from bot.staff.roster import UPDATE_CONTACT_WAY, Roster
from bot.wecom import errcodes
from bot.wecom.api.transfer import DONE, OVER_LIMIT, REFUSED, UNASSIGNED_PAGE, WAITING
from bot.wecom.client import WeComClient, WeComError

log = logging.getLogger(__name__)

NO_CLERK_WAIT = 3600.0        # a store with no clerk: look for a successor again in an hour
GROUP_RETRIES = 3
# What WeCom answers past 300 groups a day per original owner is UNCONFIRMED: taken as 45009 (retry tomorrow).
DAILY_LIMIT_CODE = errcodes.API_FREQ_LIMIT
RETRY_GROUP_CODES = frozenset({errcodes.SYSTEM_BUSY, errcodes.API_FREQ_LIMIT, errcodes.API_CONCURRENCY_LIMIT,
                               errcodes.UNKNOWN_OUTCOME})


def _who(s: Session, p: dict) -> str:
    st = s.get(Store, p["store_code"])
    name = st.name if st else p["store_code"]
    what = "离职交接" if p["mode"] == "resigned" else "在职交接"
    return f"{name}（{p['store_code']}）{what} {p['handover_userid']} → {p.get('takeover_userid') or '？'}"


# -- the contact way ------------------------------------------------------------------------------
def contact_way_executor(sessions: sessionmaker[Session]) -> Executor:
    reads = reads_of(sessions)

    def send(client: WeComClient, row: Outbox) -> dict:
        code = row.payload["store_code"]
        with reads() as s:   # the store's clerks now, not when the row was queued (two may leave)
            st = s.get(Store, code)
            users = list(st.clerks or []) if st else []
        if not users:
            return {"skipped": "no clerk"}
        api = client.external_contact
        way = api.get_contact_way(row.payload["config_id"])["contact_way"]
        if sorted(way.get("user") or []) == sorted(users):
            return {"unchanged": users}
        if int(way.get("type", 2)) == 1 and len(users) != 1:
            return {"skipped": "a single-clerk contact way cannot take several: sync replaces it"}
        api.update_contact_way(row.payload["config_id"], code, skip_verify=True, state=code, user=users)
        return {"user": users}

    return Executor(UPDATE_CONTACT_WAY, send)


# -- the plan of a resigned clerk's handover ----------------------------------------------------------
def plan_executor(sessions: sessionmaker[Session], roster: Roster) -> Executor:
    reads = reads_of(sessions)

    def unassigned(client: WeComClient, userid: str) -> tuple[set[str], str | None]:
        """The departed clerk's customers as WeCom lists them; on a refusal the bot's records stand alone."""
        out: set[str] = set()
        cursor = None
        try:
            for _ in range(100_000):
                page = client.transfer.get_unassigned_list(cursor=cursor, page_size=UNASSIGNED_PAGE)
                out |= {i["external_userid"] for i in page.get("info") or [] if i.get("handover_userid") == userid}
                cursor = page.get("next_cursor")
                if page.get("is_last", True) or not cursor:
                    break
        except WeComError as e:
            if e.errcode in errcodes.RETRYABLE:
                raise
            return out, f"{e.errcode} {e.errmsg}"
        return out, None

    def send(client: WeComClient, row: Outbox) -> dict:
        p = row.payload
        x, code = p["handover_userid"], p["store_code"]
        with reads() as s:
            st = s.get(Store, code)
            successor = ho.pick_successor(s, list(st.clerks or []) if st else [], p.get("successor"), x)
            if successor is None:   # not an attempt: the plan waits for a clerk (no_clerk told ops)
                raise WeComError(errcodes.PACED, "no clerk left at the store: waiting for one", ho.PLAN,
                                 retry_after=NO_CLERK_WAIT)
            mine = set(ho.recorded_customers(s, x, code))
            elsewhere = {e for other in p.get("stores") or [] if other != code
                         for e in ho.recorded_customers(s, x, other)}
            chats = ho.groups_of(s, x, code, p.get("stores"))
        listed, refused = unassigned(client, x)
        unattributed = sorted(listed - mine - elsewhere)
        stores = sorted(p.get("stores") or [code])
        customers = sorted(mine | (set(unattributed) if len(stores) == 1 else set()))
        return {"successor": successor, "customers": customers, "chats": chats,
                "ambiguous": unattributed if len(stores) > 1 and code == stores[0] else [],
                "unassigned_error": refused}

    def settle(s: Session, row: Outbox, outcome: Outcome, now: datetime) -> None:
        p = row.payload
        if outcome.status != "done":
            roster.tell(s, [f"【交接未能开始】{_who(s, p)}：{outcome.errcode} {outcome.error}"], now)
            return
        r = outcome.result
        ho.queue_transfers(s, roster.clock, hid=p["hid"], mode="resigned", handover=p["handover_userid"],
                           takeover=r["successor"], store_code=p["store_code"], customers=r["customers"],
                           chats=r["chats"])
        lines = []
        if r["ambiguous"]:
            lines.append(f"【客户归属不明】离职店员 {p['handover_userid']} 服务过多家门店（{'、'.join(p['stores'])}），"
                         f"有 {len(r['ambiguous'])} 位客户查不到是哪家门店的，没有自动交接，请在管理后台分配。")
        if r.get("unassigned_error"):
            lines.append(f"【交接只按机器人记录】{_who(s, {**p, 'takeover_userid': r['successor']})}："
                         f"读取待分配客户失败（{r['unassigned_error']}），只交接了机器人记录里的客户。")
        roster.tell(s, lines, now)
        log.info("handover %s: %d customers, %d groups → %s", p["hid"], len(r["customers"]), len(r["chats"]),
                 r["successor"])

    return Executor(ho.PLAN, send, settle=settle)


# -- customer transfers ---------------------------------------------------------------------------------
def customer_transfer_executor(kind: str):
    onjob = kind == ho.CUSTOMERS["onjob"]

    def factory(roster: Roster) -> Executor:
        def send(client: WeComClient, row: Outbox) -> dict:
            p = row.payload
            args = dict(handover_userid=p["handover_userid"], takeover_userid=p["takeover_userid"],
                        external_userid=p["external_userid"])
            if onjob:
                res = client.transfer.transfer_customer(**args, transfer_success_msg=p.get("transfer_success_msg"))
            else:
                res = client.transfer.resigned_transfer_customer(**args)
            return {"customer": res}

        def reconcile(client: WeComClient, row: Outbox) -> dict | None:
            """The batch is in transfer_result when WeCom did the call: take it, and leave out who is not."""
            p = row.payload
            seen = client.transfer.results(onjob=onjob, handover_userid=p["handover_userid"],
                                           takeover_userid=p["takeover_userid"])
            if not any(e in seen for e in p["external_userid"]):
                return None
            return {"customer": [{"external_userid": e, "errcode": 0 if e in seen else None}
                                 for e in p["external_userid"]], "reconciled": True}

        def settle(s: Session, row: Outbox, outcome: Outcome, now: datetime) -> None:
            p = row.payload
            if outcome.status != "done":
                roster.tell(s, [f"【客户转接失败】{_who(s, p)}：{len(p['external_userid'])} 位客户没有转接"
                                f"（{outcome.errcode} {outcome.error}）。"], now)
                return
            result = outcome.result.get("customer") or []
            answered = {c["external_userid"] for c in result}
            leftover = [c["external_userid"] for c in result if c.get("errcode") is None]
            leftover += [e for e in p["external_userid"] if e not in answered]
            if leftover:   # WeCom did the call but does not list these: ask for them again
                OutboxRepo(s, roster.clock).add(row.kind, f"{row.key}.1"[:160], {**p, "external_userid": leftover})
            limited = [c["external_userid"] for c in result if c.get("errcode") == errcodes.TRANSFER_LIMIT]
            failed = [(c["external_userid"], c["errcode"]) for c in result
                      if c.get("errcode") not in (None, 0, errcodes.TRANSFER_LIMIT, errcodes.NO_CONTACT_RELATION)]
            lines = []
            if limited:
                lines.append(f"【客户转接被企业微信拒绝】{_who(s, p)}：{len(limited)} 位客户90天内已被转接过2次，"
                             f"企业微信不允许再转接（40128）：{'、'.join(limited[:10])}")
            if failed:
                lines.append(f"【客户转接失败】{_who(s, p)}：" +
                             "、".join(f"{e}（{c}）" for e, c in failed[:10]))
            roster.tell(s, lines, now)

        return Executor(kind, send, settle=settle, idempotent=False, reconcile=reconcile)
    return factory


def results_executor(kind: str):
    onjob = kind == ho.RESULTS["onjob"]

    def factory(roster: Roster) -> Executor:
        def send(client: WeComClient, row: Outbox) -> dict:
            p = row.payload
            seen = client.transfer.results(onjob=onjob, handover_userid=p["handover_userid"],
                                           takeover_userid=p["takeover_userid"])
            return {"seen": {e: int(c.get("status") or WAITING) for e, c in seen.items()}}

        def settle(s: Session, row: Outbox, outcome: Outcome, now: datetime) -> None:
            p = row.payload
            if outcome.status != "done":
                roster.tell(s, [f"【转接结果查询失败】{_who(s, p)}：{outcome.errcode} {outcome.error}"], now)
                return
            seen = outcome.result.pop("seen")
            rows = ho.customer_rows(s, p["hid"])
            settled = all(r.status in ("done", "dead", "expired") for r in rows)
            asked = [c["external_userid"] for r in rows if r.status == "done"
                     for c in (r.result or {}).get("customer") or [] if c.get("errcode") == 0]
            statuses = {e: seen.get(e, WAITING) for e in asked}
            waiting = [e for e, st in statuses.items() if st == WAITING]
            final = settled and not waiting
            outcome.result.update(statuses=statuses, final=final)
            if not final and p["look"] < ho.MAX_LOOKS:
                OutboxRepo(s, roster.clock).add(kind, f"{p['hid']}:r{p['look'] + 1}", {**p, "look": p["look"] + 1},
                                                not_before=now + ho.LOOK_EVERY)
                if not any(st in (REFUSED, OVER_LIMIT) for st in statuses.values()):
                    return
            refused = [e for e, st in statuses.items() if st == REFUSED]
            over = [e for e, st in statuses.items() if st == OVER_LIMIT]
            told = {e for r in s.scalars(select(Outbox).where(Outbox.key.like(f"{p['hid']}:r%"),
                                                                  Outbox.id != row.id, Outbox.status == "done"))
                    for e, st in ((r.result or {}).get("statuses") or {}).items() if st in (REFUSED, OVER_LIMIT)}
            refused, over = [e for e in refused if e not in told], [e for e in over if e not in told]
            lines = []
            if refused:
                lines.append(f"【客户拒绝转接】{_who(s, p)}：{len(refused)} 位客户拒绝了转接，仍留在原店员名下："
                             f"{'、'.join(refused[:10])}")
            if over:
                lines.append(f"【接替店员客户已满】{_who(s, p)}：{p['takeover_userid']} 的客户数已达企业微信上限，"
                             f"{len(over)} 位客户没能转过去。请换一位接替店员（wecom-bot handover … --to）。")
            if not final and p["look"] >= ho.MAX_LOOKS and waiting:
                lines.append(f"【转接久未完成】{_who(s, p)}：{len(waiting)} 位客户两天后仍在等待接替。")
            if final:
                done = sum(1 for st in statuses.values() if st == DONE)
                log.info("handover %s: customers settled: %d done, %d refused, %d over the limit",
                         p["hid"], done, len(refused), len(over))
            roster.tell(s, lines, now)

        return Executor(kind, send, settle=settle)
    return factory


# -- group transfers ------------------------------------------------------------------------------------
def group_transfer_executor(kind: str):
    onjob = kind == ho.GROUPS["onjob"]

    def factory(roster: Roster) -> Executor:
        def send(client: WeComClient, row: Outbox) -> dict:
            p = row.payload
            call = client.group_transfer.onjob_transfer if onjob else client.group_transfer.transfer
            failed = call(chat_id_list=p["chat_id_list"], new_owner=p["new_owner"])
            bad = {f["chat_id"] for f in failed}
            return {"moved": [c for c in p["chat_id_list"] if c not in bad], "failed": failed}

        def reconcile(client: WeComClient, row: Outbox) -> dict | None:
            """Groups already owned by the new owner were moved by the lost call."""
            p = row.payload
            moved, rest = [], []
            for chat_id in p["chat_id_list"]:
                try:
                    owner = client.external_contact_group_chat.get(chat_id).get("owner")
                except WeComError as e:
                    if e.errcode in errcodes.RETRYABLE:
                        raise
                    owner = None
                (moved if owner == p["new_owner"] else rest).append(chat_id)
            if not moved:
                return None
            return {"moved": moved, "failed": [{"chat_id": c, "errcode": errcodes.UNKNOWN_OUTCOME} for c in rest],
                    "reconciled": True}

        def settle(s: Session, row: Outbox, outcome: Outcome, now: datetime) -> None:
            p = row.payload
            if outcome.status != "done":
                roster.tell(s, [f"【客户群转接失败】{_who(s, p)}：{len(p['chat_id_list'])} 个群没有转接"
                                f"（{outcome.errcode} {outcome.error}）。"], now)
                return
            for chat_id in outcome.result.get("moved") or []:
                set_group_owner(s, chat_id, p["new_owner"], now)
            # a successor in no store (or in two, with the group behind neither QR): ops decide, not the bot
            stray = unassigned(s, outcome.result.get("moved") or [])
            if stray:
                roster.tell(s, [unassigned_line(g, why) for g, why in stray], now)
            retry, lines = [], []
            for f in outcome.result.get("failed") or []:
                code = int(f.get("errcode") or 0)
                if code in RETRY_GROUP_CODES:
                    retry.append((f["chat_id"], code))
                elif code == errcodes.INVALID_CHAT_ID:
                    log.info("handover %s: group %s is gone", p["hid"], f["chat_id"])
                elif code == errcodes.OWNER_NOT_RESIGNED:
                    lines.append(f"【客户群转接失败】{_who(s, p)}：群 {f['chat_id']} 的群主没有离职，不能按离职继承（90500）。")
                elif code == errcodes.TRANSFER_LIMIT:
                    lines.append(f"【客户群转接被企业微信拒绝】{_who(s, p)}：群 {f['chat_id']} 90天内已被转接过2次。")
                else:
                    lines.append(f"【客户群转接失败】{_who(s, p)}：群 {f['chat_id']}（{code} {f.get('errmsg', '')}）。")
            tries = int(p.get("retry") or 0)
            if retry and tries < GROUP_RETRIES:
                wait = timedelta(days=1) if any(c == DAILY_LIMIT_CODE for _, c in retry) else timedelta(minutes=10)
                OutboxRepo(s, roster.clock).add(row.kind, f"{row.key}.{tries + 1}"[:160],
                                                {**p, "chat_id_list": [c for c, _ in retry], "retry": tries + 1},
                                                not_before=now + wait)
            elif retry:
                lines.append(f"【客户群转接失败】{_who(s, p)}：{len(retry)} 个群重试{GROUP_RETRIES}次仍未转接："
                             f"{'、'.join(c for c, _ in retry)}")
            roster.tell(s, lines, now)

        return Executor(kind, send, settle=settle, idempotent=False, reconcile=reconcile)
    return factory


EXECUTORS = {
    UPDATE_CONTACT_WAY: contact_way_executor,
    ho.PLAN: plan_executor,
    **{k: customer_transfer_executor(k) for k in ho.CUSTOMERS.values()},
    **{k: results_executor(k) for k in ho.RESULTS.values()},
    **{k: group_transfer_executor(k) for k in ho.GROUPS.values()},
}
