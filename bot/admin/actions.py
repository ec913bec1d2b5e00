"""The ops console's POST actions (issue 15): fire or pause / resume a slot for one store, re-run sync for
one store, close a chain. Each is the domain's own operation (Broadcaster.fire / pause_slot / resume_slot,
the sync_store outbox kind, Chains.close), so it keeps the same rules and is idempotent the same way; each
is logged (who, what, when) and kept in admin_action, with the Chinese sentence the console shows after.

The routes check the viewer, the CSRF token and the store's scope before they get here."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bot.broadcast.dispatch import FireReport, slot_time
from bot.db.engine import reads_of
from bot.db.models import AdminAction, Chain, Outbox, SlotDelivery
from bot.messaging.outbox import OutboxRepo
from bot.provisioning.executors import SYNC_STORE_KIND

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Done:
    """What an action did, as the console says it (flash) and whether anything changed."""
    message: str
    changed: bool


class AdminActions:
    def __init__(self, c):
        self.c = c
        self.sessions = c.sessions
        self.broadcaster = c.broadcaster
        self.clock = c.clock
        self.tz = c.settings.tz

    def today(self) -> date:
        return self.clock.now().astimezone(self.tz).date()

    def record(self, s: Session, userid: str, action: str, store: str, target: str, done: Done,
               **detail) -> None:
        now = self.clock.now()
        s.add(AdminAction(at=now, userid=userid, action=action, store_code=store, target=target,
                          outcome=done.message[:200], detail={"changed": done.changed, **detail}))
        log.info("admin action %s by %s at %s: store=%s target=%s changed=%s: %s", action, userid,
                 now.isoformat(), store, target, done.changed, done.message)

    # -- broadcasts ---------------------------------------------------------------------------
    def fire(self, userid: str, store: str, slot: str) -> Done:
        day = self.today()
        r: FireReport = self.broadcaster.fire(day, slot, store)
        self.c.doorbell.ring()
        with reads_of(self.sessions)() as s:
            ops_paused = s.scalar(_count(day, slot, store, status="paused")) or 0
        if r.groups or r.failed:
            parts = [f"群发 {r.mass} 个群（待群主确认）" if r.mass else "",
                     f"提醒群主 {r.reminders} 个群" if r.reminders else "",
                     f"其中 {r.downgraded} 个群本期群发额度已用完，改为提醒" if r.downgraded else "",
                     f"{r.failed} 个群内容模板出错未发" if r.failed else ""]
            message = f"已为 {store} 发出 {slot}：" + "，".join(p for p in parts if p) + "。"
        elif r.paused:
            message = f"{store} 的 {slot}：{r.paused} 个群的店员暂停了今天的推送，没有发出。"
        elif r.skipped:
            message = f"{store} 的 {slot}：日历里这个时段没有内容，{r.skipped} 个群跳过。"
        elif ops_paused:
            message = f"{store} 的 {slot} 已被暂停（{ops_paused} 个群）：请先「恢复」再发送。"
        elif r.already:
            message = f"{store} 的 {slot} 已经发过了（{r.already} 个群），不会重复发送。"
        else:
            message = f"{store} 的 {slot} 没有要发的群（没有客户群，或日历这天这个时段没有内容）。"
        done = Done(message, bool(r.groups or r.failed or r.paused or r.skipped))
        with self.sessions.begin() as s:
            self.record(s, userid, "fire", store, slot, done, day=day.isoformat(), mass=r.mass,
                        reminders=r.reminders, paused=r.paused, skipped=r.skipped, failed=r.failed,
                        downgraded=r.downgraded, already=r.already)
        return done

    def pause(self, userid: str, store: str, slot: str) -> Done:
        day = self.today()
        b = self.broadcaster
        b.plan_day(day, b.plan_from(day, slot), store)   # so there are rows to hold back
        with self.sessions.begin() as s:
            n = b.pause_slot(s, day, slot, store)
            if n:
                done = Done(f"已暂停 {store} 的 {slot}：{n} 个群这个时段不发送（可随时恢复）。", True)
            else:
                held = s.scalar(_count(day, slot, store, status="paused")) or 0
                fired = s.scalar(_count(day, slot, store, fired=True)) or 0
                done = Done(f"{store} 的 {slot} 已经是暂停状态（{held} 个群）。" if held and not fired else
                            f"{store} 的 {slot} 已经发出（{fired} 个群），无法暂停。" if fired else
                            f"{store} 的 {slot} 没有要发的群，无需暂停。", False)
            self.record(s, userid, "pause", store, slot, done, day=day.isoformat(), rows=n)
        return done

    def resume(self, userid: str, store: str, slot: str) -> Done:
        day = self.today()
        b = self.broadcaster
        with self.sessions.begin() as s:
            n = b.resume_slot(s, day, slot, store)
            if n:
                passed = self.clock.now() >= slot_time(day, slot, self.tz)
                done = Done(f"已恢复 {store} 的 {slot}：{n} 个群" + (
                    "。这个时段已过，需要的话点「立即发送」。" if passed else "，到点照常发送。"), True)
            else:
                done = Done(f"{store} 的 {slot} 没有被运营暂停，无需恢复。", False)
            self.record(s, userid, "resume", store, slot, done, day=day.isoformat(), rows=n)
        return done

    # -- sync -----------------------------------------------------------------------------------
    def sync(self, userid: str, store: str) -> Done:
        """Queue sync_store for the worker (it calls WeCom; this request does not). One at a time per
        store: while one is pending, a second request only says so."""
        now = self.clock.now()
        with self.sessions.begin() as s:
            waiting = s.scalar(select(Outbox.id).where(
                Outbox.kind == SYNC_STORE_KIND, Outbox.status.in_(("pending", "running")),
                Outbox.key.like(f"{SYNC_STORE_KIND}:{store}:%")).limit(1))
            if waiting:
                done = Done(f"{store} 的同步已在排队，完成前不会重复提交。", False)
            else:
                OutboxRepo(s, self.clock).add(SYNC_STORE_KIND, f"{SYNC_STORE_KIND}:{store}:{now:%Y%m%dT%H%M%S}",
                                              {"store_code": store, "by": userid})
                done = Done(f"已提交 {store} 的重新同步：稍后刷新本页查看二维码与客户群。", True)
            self.record(s, userid, "sync", store, "", done)
        self.c.doorbell.ring()
        return done

    def last_sync(self, store: str) -> Outbox | None:
        with reads_of(self.sessions)() as s:
            return s.scalar(select(Outbox).where(Outbox.kind == SYNC_STORE_KIND,
                                                 Outbox.key.like(f"{SYNC_STORE_KIND}:{store}:%"))
                            .order_by(Outbox.id.desc()).limit(1))

    # -- chains ---------------------------------------------------------------------------------
    def close_chain(self, userid: str, chain_id: int) -> Done:
        now = self.clock.now()
        with self.sessions.begin() as s:
            chain = s.get(Chain, chain_id)
            if self.c.chains.close(s, chain, "early", now):
                done = Done(f"已截单 #{chain.id} {chain.title}：备货名单已发给开团店员 {chain.clerk}。", True)
            else:
                done = Done(f"#{chain.id} {chain.title} 已经截单了。", False)
            self.record(s, userid, "close_chain", chain.store_code, str(chain.id), done)
        self.c.doorbell.ring()
        return done

    def recent(self, store_codes: list[str] | None, limit: int = 20) -> list[AdminAction]:
        with reads_of(self.sessions)() as s:
            q = select(AdminAction)
            if store_codes is not None:
                q = q.where(AdminAction.store_code.in_(store_codes))
            return list(s.scalars(q.order_by(AdminAction.id.desc()).limit(limit)))


def _count(day: date, slot: str, store: str, *, status: str | None = None, fired: bool = False):
    q = select(func.count()).select_from(SlotDelivery).where(
        SlotDelivery.day == day.isoformat(), SlotDelivery.slot == slot, SlotDelivery.store_code == store)
    if status:
        q = q.where(SlotDelivery.status == status)
    if fired:
        q = q.where(SlotDelivery.status.not_in(("planned", "paused")))
    return q
