"""Firing a slot: plan the day (once per group), then hand each owner clerk one mass message per store
for the groups it goes to as one, and one reminder for the rest, through the outbox.

A clerk may serve several stores: the mass message is per (sender, store), because its content is the
store's (add_msg_template has one sender, one text and a chat_id_list); the reminder is one per clerk
and slot, naming each store, because its sidebar page shows every group with its own store's content
and WeCom keeps 30 app messages a minute per member.

Idempotent per (day, slot, group): a group's row moves planned → queued by one conditional UPDATE,
so firing twice, a restart mid-slot or two schedulers send nothing twice; the outbox keys
(`gm:` per day, slot, sender and store; `rm:` per day, slot and clerk) make the calls themselves once-only.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

import jinja2
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from bot.broadcast import planner
from bot.calendar.calendar import ContentCalendar, Entry
from bot.chains.service import Chains
from bot.clock import Clock
from bot.config import BroadcastSettings
from bot.db.engine import reads_of
from bot.db.models import BroadcastPause, BroadcastTask, Chain, GroupChat, GroupReceipt, SlotDelivery, Store
from bot.messaging.outbox import OutboxRepo, insert_ignore_many
from bot.text import yuan

log = logging.getLogger(__name__)

CHUNK = 400          # owners per transaction when firing: short write locks, few round trips
PENDING = ("queued", "awaiting")
OPS_PAUSED = "运营在后台暂停了这个时段"   # the reason of a row ops paused (resume_slot undoes only these)


@dataclass
class FireReport:
    day: date
    slot: str
    groups: int = 0
    mass: int = 0
    reminders: int = 0
    paused: int = 0
    skipped: int = 0
    downgraded: int = 0
    already: int = 0
    failed: int = 0                                          # groups whose content failed to render live
    owners: set[str] = field(default_factory=set)            # clerks who got a mass task or a reminder
    reminded_owners: set[str] = field(default_factory=set)

    def summary(self) -> str:
        return (f"{self.day} {self.slot}: {self.groups} groups fired — {self.mass} by mass message, {self.reminders} "
                f"by owner reminder ({self.downgraded} moved to reminder: cap used), {self.paused} paused, "
                f"{self.skipped} without content; {self.already} already fired before"
                + (f"; {self.failed} failed: the template does not render for their store" if self.failed else ""))


def slot_time(day: date, slot: str, tz) -> datetime:
    hh, mm = map(int, slot.split(":"))
    return datetime.combine(day, time(hh, mm), tz)


def spread_seconds(userid: str, spread: int) -> int:
    """A clerk's fixed offset into the slot's first minute: never at :00, the same on every run
    (0 spreads nothing: the demo's compressed day)."""
    if spread <= 0:
        return 0
    return 5 + int(hashlib.sha1(userid.encode()).hexdigest()[:8], 16) % spread


class Broadcaster:
    def __init__(self, sessions: sessionmaker[Session], clock: Clock, calendar: ContentCalendar,
                 settings: BroadcastSettings, chains: Chains, sidebar_link):
        self.sessions = sessions
        self.reads = reads_of(sessions)
        self.clock = clock
        self.calendar = calendar
        self.settings = settings
        self.chains = chains
        self.sidebar_link = sidebar_link   # (day, slot, clerk) -> URL of the signed sidebar page

    @property
    def tz(self):
        return self.clock.tz

    # -- how much of the cap is used --------------------------------------------------------
    def used_in_period(self, s: Session, day: date, chat_ids: list[str] | None = None) -> dict[str, int]:
        """Per group: mass messages received in the cap's period up to now, plus ours still waiting
        for the owner (they count as soon as the owner confirms)."""
        start, end = planner.period(self.settings.receive_cap, day)
        lo = datetime.combine(start, time(0), self.tz)
        hi = datetime.combine(end + timedelta(days=1), time(0), self.tz)
        used: dict[str, int] = defaultdict(int)
        q = select(GroupReceipt.chat_id, func.count()).where(GroupReceipt.sent_at >= lo, GroupReceipt.sent_at < hi)
        if chat_ids is not None:
            q = q.where(GroupReceipt.chat_id.in_(chat_ids))
        for chat_id, n in s.execute(q.group_by(GroupReceipt.chat_id)):
            used[chat_id] += n
        q = select(SlotDelivery.chat_id, func.count()).where(
            SlotDelivery.day >= start.isoformat(), SlotDelivery.day <= end.isoformat(),
            SlotDelivery.mode == "mass", SlotDelivery.status.in_(PENDING))
        if chat_ids is not None:
            q = q.where(SlotDelivery.chat_id.in_(chat_ids))
        for chat_id, n in s.execute(q.group_by(SlotDelivery.chat_id)):
            used[chat_id] += n
        return used

    # -- planning ------------------------------------------------------------------------------
    def plan_day(self, day: date, from_slot: str, store: str | None = None) -> int:
        """Plan `day` for every group not planned yet (from `from_slot` on): rows in slot_delivery.
        With `store`, that store's groups only (an ops action on /admin/broadcasts)."""
        self.calendar.reload_if_changed()
        now = self.clock.now()
        with self.reads() as r:
            # Only live groups of open stores: a dismissed group or a closed store gets no more slots.
            q = (select(GroupChat.chat_id, GroupChat.store_code, GroupChat.owner)
                 .join(Store, Store.code == GroupChat.store_code)
                 .where(GroupChat.dismissed_at.is_(None), Store.closed_at.is_(None)))
            groups = r.execute(q.where(GroupChat.store_code == store) if store else q).all()
            pq = select(SlotDelivery.chat_id).where(SlotDelivery.day == day.isoformat())
            if store:
                pq = pq.where(SlotDelivery.chat_id.in_([g.chat_id for g in groups]))
            planned = set(r.scalars(pq.distinct()))
            todo = [g for g in groups if g.chat_id not in planned]
            if not todo:
                return 0
            used = self.used_in_period(r, day)
            # A group new since ops paused a slot for its store is held back with the store's others.
            held = set(r.execute(select(SlotDelivery.store_code, SlotDelivery.slot).where(
                SlotDelivery.day == day.isoformat(), SlotDelivery.status == "paused",
                SlotDelivery.reason == OPS_PAUSED,
                SlotDelivery.store_code.in_({g.store_code for g in todo})).distinct()).all())
        rows, plans = [], {}
        for g in todo:
            if g.store_code not in plans:
                entries = {s: e for s, e in self.calendar.day(g.store_code, day).items() if s >= from_slot}
                plans[g.store_code] = entries
            entries = plans[g.store_code]
            allowed = planner.allowance(self.settings.receive_cap, day, used.get(g.chat_id, 0))
            mass = planner.mass_slots(entries.values(), allowed)
            for slot, e in entries.items():
                paused = (g.store_code, slot) in held
                rows.append(dict(day=day.isoformat(), slot=slot, chat_id=g.chat_id, store_code=g.store_code,
                                 owner=g.owner, mode="mass" if slot in mass else "reminder", kind=e.kind,
                                 status="paused" if paused else "planned", reason=OPS_PAUSED if paused else None,
                                 planned_at=now))
        for i in range(0, len(rows), 5000):
            with self.sessions.begin() as s:
                insert_ignore_many(s, SlotDelivery, rows[i:i + 5000])
        log.info("planned %s for %d groups (%d rows)", day, len(todo), len(rows))
        return len(rows)

    def plan_from(self, day: date, slot: str) -> str:
        """Where planning starts for a fire of `slot` of `day` (scheduled, or early or late from the CLI
        or the console): the earliest slot the scheduler may still fire (within its misfire grace), or `slot` if
        earlier. Planning from `slot` alone would leave an earlier slot still to come unplanned for good
        (plan_day plans each group once a day)."""
        now = self.clock.now()
        grace = timedelta(minutes=self.settings.misfire_grace_minutes)
        coming = [x for x in self.settings.slots if slot_time(day, x, self.tz) + grace > now]
        return min([slot, *coming])

    # -- firing --------------------------------------------------------------------------------
    def fire(self, day: date, slot: str, store: str | None = None) -> FireReport:
        """Fire `slot` of `day`; with `store`, for that store's groups only (the ops console's 立即发送):
        the same claim, cap and outbox keys, so a group never gets its slot twice whoever fires first."""
        report = FireReport(day, slot)
        # from the earliest slot still to come: `slot fire 12:00` run at 09:00 must not leave 10:00 unplanned
        self.plan_day(day, self.plan_from(day, slot), store)
        where = (SlotDelivery.day == day.isoformat(), SlotDelivery.slot == slot,
                 *((SlotDelivery.store_code == store,) if store else ()))
        with self.reads() as r:
            owners = list(r.scalars(select(SlotDelivery.owner).where(*where).distinct()))
            report.already = r.scalar(select(func.count()).select_from(SlotDelivery).where(
                *where, SlotDelivery.status != "planned")) or 0
        for i in range(0, len(owners), CHUNK):
            with self.sessions.begin() as s:
                self._fire_owners(s, day, slot, owners[i:i + CHUNK], report, only_store=store)
        log.info("slot %s%s", report.summary(), f" (store {store} only)" if store else "")
        return report

    def _fire_owners(self, s: Session, day: date, slot: str, owners: list[str], report: FireReport,
                     only_store: str | None = None) -> None:
        now = self.clock.now()
        d = day.isoformat()
        only = (SlotDelivery.store_code == only_store,) if only_store else ()
        paused = set(s.scalars(select(BroadcastPause.clerk).where(BroadcastPause.day == d,
                                                                   BroadcastPause.clerk.in_(owners))))
        if paused:
            res = s.execute(update(SlotDelivery).where(
                SlotDelivery.day == d, SlotDelivery.slot == slot, SlotDelivery.status == "planned", *only,
                SlotDelivery.owner.in_(paused)).values(status="paused", reason="店员暂停了今天的推送", fired_at=now)
                .returning(SlotDelivery.id))
            report.paused += len(res.all())
        live = [o for o in owners if o not in paused]
        if not live:
            return
        # The claim: only rows still planned move, so a second firer finds nothing to do.
        claimed = s.execute(update(SlotDelivery).where(
            SlotDelivery.day == d, SlotDelivery.slot == slot, SlotDelivery.status == "planned", *only,
            SlotDelivery.owner.in_(live)).values(status="queued", fired_at=now)
            .returning(SlotDelivery.id, SlotDelivery.chat_id, SlotDelivery.owner, SlotDelivery.store_code,
                       SlotDelivery.mode)).all()
        if not claimed:
            return
        stores = {st.code: st for st in s.scalars(select(Store).where(
            Store.code.in_({c.store_code for c in claimed})))}
        mass_chats = [c.chat_id for c in claimed if c.mode == "mass"]
        used = self.used_in_period(s, day, mass_chats) if mass_chats else {}
        limit = planner.cap(self.settings.receive_cap, day)
        by_owner: dict[tuple[str, str], dict[str, list[str]]] = defaultdict(lambda: {"mass": [], "reminder": []})
        downgrade, skipped = [], []
        for c in claimed:
            entry = self.calendar.day(c.store_code, day).get(slot)
            if entry is None or c.store_code not in stores:
                skipped.append(c.id)
                continue
            mode = c.mode
            # `used` counts this row too (queued); over the cap means someone else's mass send came first.
            if mode == "mass" and used.get(c.chat_id, 0) > limit:
                mode = "reminder"
                downgrade.append(c.id)
            by_owner[(c.owner, c.store_code)][mode].append(c.chat_id)
        if skipped:
            s.execute(update(SlotDelivery).where(SlotDelivery.id.in_(skipped))
                      .values(status="skipped", reason="日历里这个时段没有内容"))
            report.skipped += len(skipped)
        if downgrade:
            s.execute(update(SlotDelivery).where(SlotDelivery.id.in_(downgrade))
                      .values(mode="reminder", reason="本期群发额度已被其他群发用掉，改为提醒群主"))
            report.downgraded += len(downgrade)
        outbox = OutboxRepo(s, self.clock)
        open_chains = self._open_chains(s, {k[1] for k in by_owner}, now)
        at = slot_time(day, slot, self.tz)
        tasks, calls = [], []  # written together below: a statement per chunk, not per owner
        reminders: dict[str, list[tuple[Store, Entry, str, int]]] = defaultdict(list)   # owner → per store
        for (owner, code), modes in sorted(by_owner.items()):
            store = stores[code]
            entry = self.calendar.day(code, day)[slot]
            ctx = self.calendar.context(store={"code": code, "name": store.name, "benefit": store.benefit or ""},
                                        clerk=owner, day=day, slot=slot, chains=open_chains.get(code, []))
            try:
                rendered = self.calendar.render(entry, ctx)
            except jinja2.TemplateError as e:
                # What `check` could not see (live data): this store's groups fail with the reason, and
                # the slot goes on for every other store.
                log.error("slot %s %s: the %s template fails for store %s (%s): its groups get nothing",
                          d, slot, entry.kind, code, e)
                s.execute(update(SlotDelivery).where(
                    SlotDelivery.day == d, SlotDelivery.slot == slot, SlotDelivery.owner == owner,
                    SlotDelivery.store_code == code,
                    SlotDelivery.chat_id.in_(modes["mass"] + modes["reminder"]), SlotDelivery.status == "queued")
                    .values(status="failed", reason=f"内容模板出错，请运营检查日历：{str(e)[:120]}"))
                report.failed += len(modes["mass"]) + len(modes["reminder"])
                continue
            report.owners.add(owner)
            if modes["mass"]:
                expires = slot_time(day, entry.expires, self.tz) if entry.expires else None
                tasks.append(dict(day=d, slot=slot, sender=owner, store_code=code, status="creating", created_at=now,
                                  expires_at=expires, reminds=[]))
                fallback = self._reminder_payload(owner, day, slot, [(store, entry, rendered.text,
                                                                      len(modes["mass"]) + len(modes["reminder"]))])
                calls.append(outbox.row(
                    "add_msg_template", f"gm:{d}:{slot}:{owner}:{code}",
                    {"day": d, "slot": slot, "sender": owner, "store_code": code, "chat_ids": modes["mass"],
                     "text": rendered.text, "attachments": list(rendered.attachments), "fallback": fallback},
                    deadline=expires or datetime.combine(day + timedelta(days=1), time(0), self.tz)))
                report.mass += len(modes["mass"])
            if modes["reminder"]:
                reminders[owner].append((store, entry, rendered.text, len(modes["reminder"])))
                report.reminders += len(modes["reminder"])
                report.reminded_owners.add(owner)
            report.groups += len(modes["mass"]) + len(modes["reminder"])
        # A slot fired ahead of its time (`slot fire` by hand) goes out now, still spread.
        base = at if now >= at else now
        for owner, parts in reminders.items():
            # One store fired alone keys its reminder by store too: the rest of the slot, fired after,
            # still reminds this clerk of their other stores' groups.
            calls.append(outbox.row(
                "slot_reminder", f"rm:{d}:{slot}:{owner}" + (f":{only_store}" if only_store else ""),
                self._reminder_payload(owner, day, slot, parts),
                not_before=max(now, base + timedelta(seconds=spread_seconds(owner, self.settings.reminder_spread_seconds)))))
        insert_ignore_many(s, BroadcastTask, tasks)
        outbox.add_many(calls)

    def _open_chains(self, s: Session, codes: set[str], now: datetime) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = defaultdict(list)
        if not codes:
            return out
        for ch in s.scalars(select(Chain).where(Chain.store_code.in_(codes), Chain.status == "open",
                                                Chain.opens_at <= now, Chain.deadline > now).order_by(Chain.deadline)):
            out[ch.store_code].append(chain_view(self.chains, ch, self.tz))
        return out

    def _reminder_payload(self, owner: str, day: date, slot: str, parts: list[tuple[Store, Entry, str, int]]) -> dict:
        """One textcard for the clerk's reminder groups of this slot, each of their stores named when
        there are several (the sidebar it opens holds every group, with its own store's content)."""
        def preview(text: str) -> str:   # textcard descriptions hold 512 bytes: shorter with several stores
            first = text.splitlines()
            return (first[0] if first else "")[:60 // len(parts)]

        groups = sum(n for *_, n in parts)
        kinds = {e.kind_zh for _, e, _, _ in parts}
        if len(parts) == 1:
            lines = f"<div class=\"normal\">{preview(parts[0][2])}</div>"
        else:
            lines = "".join(f"<div class=\"normal\">{st.name}（{n}个群）：{preview(text)}</div>"
                            for st, _, text, n in parts)
        title = f"{slot} 群发提醒：" + (kinds.pop() if len(kinds) == 1 else f"{len(parts)}个门店")
        return {"touser": [owner], "msgtype": "textcard", "day": day.isoformat(), "slot": slot,
                "stores": [st.code for st, *_ in parts],
                "content": {"title": title,
                            "description": (f"<div class=\"gray\">{day:%m月%d日} {slot}</div>" + lines +
                                            f"<div class=\"highlight\">{groups} 个群待发送：点开后在群聊工具栏一键发送</div>"),
                            "url": self.sidebar_link(day, slot, owner), "btntxt": "去发送"}}

    # -- clerk controls ----------------------------------------------------------------------
    def pause(self, s: Session, clerk: str, day: date) -> int:
        """Skip the clerk's groups for the rest of the day; the number of deliveries it holds back."""
        now = self.clock.now()
        insert_ignore_many(s, BroadcastPause, [dict(day=day.isoformat(), clerk=clerk, created_at=now)])
        return s.scalar(select(func.count()).select_from(SlotDelivery).where(
            SlotDelivery.day == day.isoformat(), SlotDelivery.owner == clerk, SlotDelivery.status == "planned")) or 0

    def resume(self, s: Session, clerk: str, day: date) -> bool:
        res = s.execute(delete(BroadcastPause).where(BroadcastPause.day == day.isoformat(),
                                                     BroadcastPause.clerk == clerk).returning(BroadcastPause.clerk))
        return bool(res.all())

    # -- ops controls (one store, one slot) ----------------------------------------------------
    # On the rows themselves, not a pause table: a row still planned is what firing claims, so a
    # paused one is passed over by every firer, and resuming puts back only what ops paused.
    def pause_slot(self, s: Session, day: date, slot: str, store: str) -> int:
        """Hold back the store's groups of `slot` (plan them first: plan_day(day, plan_from(...), store)).
        Returns how many rows it paused now (0: already paused, or already fired)."""
        res = s.execute(update(SlotDelivery).where(
            SlotDelivery.day == day.isoformat(), SlotDelivery.slot == slot, SlotDelivery.store_code == store,
            SlotDelivery.status == "planned").values(status="paused", reason=OPS_PAUSED).returning(SlotDelivery.id))
        return len(res.all())

    def resume_slot(self, s: Session, day: date, slot: str, store: str) -> int:
        """Undo pause_slot: those rows are planned again (fired by the slot, or by fire(store=...) once
        its time has passed). A clerk's own 暂停 is left alone."""
        res = s.execute(update(SlotDelivery).where(
            SlotDelivery.day == day.isoformat(), SlotDelivery.slot == slot, SlotDelivery.store_code == store,
            SlotDelivery.status == "paused", SlotDelivery.reason == OPS_PAUSED)
            .values(status="planned", reason=None).returning(SlotDelivery.id))
        return len(res.all())


def chain_view(chains: Chains, ch: Chain, tz, chat_id: str | None = None) -> dict:
    """What calendar templates see of an open chain."""
    return {"id": ch.id, "title": ch.title, "price": yuan(ch.price_cents), "stock_left": ch.stock_left,
            "stock_total": ch.stock_total, "deadline": f"{ch.deadline.astimezone(tz):%m-%d %H:%M}",
            "link": chains.link(ch, chat_id)}
