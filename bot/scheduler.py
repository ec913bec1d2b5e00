"""Scheduled jobs (APScheduler 3.11): explicit zone, coalesce, misfire grace of minutes, jobs added
only when missing. With several processes on PostgreSQL, one holds an advisory lock and schedules."""

from __future__ import annotations

import logging
import threading

from datetime import date

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import select, text

from bot.bootstrap import Container
from bot.broadcast.dispatch import FireReport
from bot.db.engine import reads_of
from bot.db.models import Store
from bot.funnel.qr_health import check_wecom_side
from bot.welcome.sender import ensure_group_qr_media
from bot.wecom.client import WeComError

log = logging.getLogger(__name__)

SCHEDULER_LOCK_KEY = 0x77656362  # "wecb"


def refresh_group_qr_media(c: Container) -> int:
    """Upload each store's group QR again before its media_id's 3 days run out, so a welcome never
    waits for an upload. Returns how many stores were checked."""
    with reads_of(c.sessions)() as s:
        stores = s.execute(select(Store.code, Store.join_way_qr_code).where(Store.join_way_qr_code.is_not(None))).all()
    for code, qr in stores:
        try:
            ensure_group_qr_media(c.media, c.client, code, qr)
        except WeComError as e:
            log.warning("group QR media for %s not refreshed: %s", code, e)
    return len(stores)


def close_due_chains(c: Container) -> int:
    with c.sessions.begin() as s:
        closed = c.chains.close_due(s, c.clock.now())
    if closed:
        c.doorbell.ring()
        log.info("closed %d chain(s) at their deadline", len(closed))
    return len(closed)


def run_slot(c: Container, slot: str, day: date | None = None) -> FireReport:
    """Fire one broadcast slot: learn the clerks' own mass sends first (they use up the cap), then plan
    and dispatch. Safe to run twice or from two processes (see bot.broadcast.dispatch)."""
    day = day or c.clock.now().date()
    try:
        c.follow_up().sync_personal_sends(c.clock.now())
    except WeComError as e:
        log.warning("slot %s: clerks' own mass sends not synced (%s); planning with what is known", slot, e)
    report = c.broadcaster.fire(day, slot)
    c.doorbell.ring()
    return report


def follow_up_broadcasts(c: Container) -> None:
    r = c.follow_up().run()
    if r.reminded or r.cancelled:
        c.doorbell.ring()
    log.info("broadcast follow-up: %s", r)


def reload_calendar(c: Container) -> None:
    """Pick up ops' edits; a broken edit is logged (file:line) and the last good calendar keeps running."""
    c.calendar.reload_if_changed()
    c.content.reload_if_changed()


class Scheduler:
    def __init__(self, c: Container):
        self.c = c
        self.aps = BackgroundScheduler(timezone=c.settings.tz, job_defaults={
            "coalesce": True, "misfire_grace_time": 300, "max_instances": 1})
        self._lock_conn = None
        self._stop = threading.Event()

    def _add_jobs(self) -> None:
        if not self.aps.get_job("close_due_chains"):
            # every minute, and at once on start: chains whose deadline passed while down close now
            self.aps.add_job(close_due_chains, "interval", minutes=1, args=[self.c], id="close_due_chains",
                             next_run_time=self.c.clock.now())
        if not self.aps.get_job("qr_check"):
            self.aps.add_job(check_wecom_side, "interval", minutes=5, args=[self.c], id="qr_check")
        b = self.c.settings.broadcast
        for slot in b.slots:
            job_id = f"slot:{slot}"
            if not self.aps.get_job(job_id):
                hh, mm = map(int, slot.split(":"))
                self.aps.add_job(run_slot, CronTrigger(hour=hh, minute=mm, timezone=self.c.settings.tz),
                                 args=[self.c, slot], id=job_id, misfire_grace_time=b.misfire_grace_minutes * 60)
        if not self.aps.get_job("broadcast_follow_up"):
            self.aps.add_job(follow_up_broadcasts, "interval", minutes=b.follow_up_minutes, args=[self.c],
                             id="broadcast_follow_up")
        if not self.aps.get_job("reload_calendar"):
            self.aps.add_job(reload_calendar, "interval", seconds=10, args=[self.c], id="reload_calendar")
        if not self.aps.get_job("refresh_group_qr_media"):
            self.aps.add_job(refresh_group_qr_media, "interval", hours=6, args=[self.c], id="refresh_group_qr_media",
                             next_run_time=self.c.clock.now())

    def _elected(self) -> bool:
        if self.c.engine.dialect.name != "postgresql":
            return True  # SQLite: one machine, one serve
        if self._lock_conn is None:
            self._lock_conn = self.c.engine.connect()
        got = self._lock_conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": SCHEDULER_LOCK_KEY}).scalar()
        self._lock_conn.commit()
        return bool(got)

    def start(self) -> None:
        threading.Thread(target=self._run, name="scheduler-election", daemon=True).start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._elected():
                close_due_chains(self.c)  # catch up at once: chains whose deadline passed while down
                self._add_jobs()
                self.aps.start()
                log.info("scheduler started (%s)", self.c.settings.timezone)
                return
            self._stop.wait(30)

    def stop(self) -> None:
        self._stop.set()
        if self.aps.running:
            self.aps.shutdown(wait=False)
        if self._lock_conn is not None:
            # Advisory locks belong to the database session, which a pooled connection outlives:
            # unlock explicitly, or another process could never be elected.
            if self.c.engine.dialect.name == "postgresql":
                self._lock_conn.execute(text("SELECT pg_advisory_unlock_all()"))
                self._lock_conn.commit()
            self._lock_conn.close()
            self._lock_conn = None
