"""Scheduled jobs (APScheduler 3.11): explicit zone, coalesce, misfire grace of minutes, jobs added
only when missing.

One process runs them. It holds the `scheduler_lease` row: every tick (TICK_SECONDS) the holder
renews it with a conditional UPDATE and a standby tries to take it; a holder that cannot renew (its
connection lost, the database gone, the lease taken after it stalled) pauses its jobs at once, and
a standby takes over once the lease has run out (LEASE_SECONDS), within a minute of the holder's
death. Each job also checks, as it starts, that this process still holds the lease.

On SQLite a second guard comes first: an OS file lock (`<database>.scheduler.lock`, flock, released
by the kernel when the process dies). A second `serve` on the same file does not compete and says
so; it takes the file lock, then the lease, once the first one is gone.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import uuid
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_PAUSED, STATE_RUNNING
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from bot import retention
from bot.bootstrap import Container
from bot.broadcast.dispatch import FireReport
from bot.clock import Clock
from bot.db.engine import reads_of
from bot.db.migrate import lock_file
from bot.db.models import SchedulerLease, Store
from bot.messaging.outbox import insert_ignore
from bot.welcome.executors import ensure_group_qr_media
from bot.wecom.client import WeComError

try:
    import fcntl
except ImportError:  # fcntl is POSIX only: elsewhere the lease alone elects
    fcntl = None

log = logging.getLogger(__name__)

TICK_SECONDS = 10     # the holder renews, a standby tries, this often
LEASE_SECONDS = 30    # a holder that stopped renewing is replaced after this, plus a tick at most
LEASE_NAME = "scheduler"


DIGEST_GRACE_MINUTES = 180   # a digest three hours late is still this morning's


def missed_slots(slots: list[str], now: datetime, grace_minutes: int) -> list[str]:
    """Today's slots whose time has passed by less than the misfire grace (`now` in the bot's zone)."""
    out = []
    for slot in slots:
        hh, mm = map(int, slot.split(":"))
        at = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
        if at <= now < at + timedelta(minutes=grace_minutes):
            out.append(slot)
    return out


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
    except Exception:   # a bug or a database hiccup there must not cost the chain its slot
        log.exception("slot %s: clerks' own mass sends not synced; planning with what is known", slot)
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


def send_morning_digest(c: Container):
    """The morning digest of yesterday (bot.digest); idempotent per (day, recipient)."""
    from bot.digest import send_digest
    return send_digest(c)


def purge_old_rows(c: Container) -> dict[str, int]:
    """The daily retention pass (bot.retention)."""
    return retention.purge(c.sessions, c.clock, c.settings.retention_days)


def process_id() -> str:
    """Who holds the lease, as an operator reads it: host, pid, and a random part for pid reuse."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Lease:
    """The `scheduler_lease` row, taken and renewed by conditional UPDATE (same on SQLite and PostgreSQL)."""

    def __init__(self, sessions: sessionmaker[Session], clock: Clock, holder: str, seconds: float = LEASE_SECONDS):
        self.sessions = sessions
        self.clock = clock
        self.holder = holder
        self.seconds = seconds

    def take_or_renew(self) -> datetime | None:
        """Ours if it is free, run out, or ours already: returns until when, else None."""
        now = self.clock.now()
        until = now + timedelta(seconds=self.seconds)
        row = SchedulerLease
        with self.sessions.begin() as s:
            insert_ignore(s, row, {"name": LEASE_NAME})
            got = s.execute(update(row).where(
                row.name == LEASE_NAME,
                or_(row.holder == self.holder, row.holder.is_(None), row.lease_until.is_(None),
                    row.lease_until <= now))
                .values(holder=self.holder, heartbeat_at=now, lease_until=until).returning(row.name)).first()
        return until if got else None

    def release(self) -> None:
        """On a clean stop: the next process need not wait for the lease to run out."""
        with self.sessions.begin() as s:
            s.execute(update(SchedulerLease).where(SchedulerLease.name == LEASE_NAME,
                                                   SchedulerLease.holder == self.holder)
                      .values(holder=None, lease_until=None))


class SchedulerStatus(NamedTuple):
    holder: str | None           # None: no process holds an unexpired lease
    age_seconds: float | None    # since the last heartbeat; None: no scheduler ever ran here


def scheduler_status(sessions: sessionmaker[Session], clock: Clock) -> SchedulerStatus:
    """For /healthz: stale when age_seconds is None or past LEASE_SECONDS."""
    with reads_of(sessions)() as s:
        row = s.get(SchedulerLease, LEASE_NAME)
    if row is None or row.heartbeat_at is None:
        return SchedulerStatus(None, None)
    now = clock.now()
    holder = row.holder if row.lease_until is not None and row.lease_until > now else None
    return SchedulerStatus(holder, (now - row.heartbeat_at).total_seconds())


class FileLock:
    """A non-blocking flock on a file, which also names its holder for the others' log line."""

    def __init__(self, path: Path):
        self.path = path
        self._file = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def try_acquire(self, holder: str) -> bool:
        if self._file is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:   # BlockingIOError: someone else has it
            f.close()
            return False
        f.seek(0)
        f.truncate()
        f.write(holder + "\n")
        f.flush()
        self._file = f
        return True

    def owner(self) -> str:
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


class Scheduler:
    def __init__(self, c: Container, *, tick_seconds: float = TICK_SECONDS, lease_seconds: float = LEASE_SECONDS):
        self.c = c
        self.aps = BackgroundScheduler(timezone=c.settings.tz, job_defaults={
            "coalesce": True, "misfire_grace_time": 300, "max_instances": 1})
        self.holder = process_id()
        self.lease = Lease(c.sessions, c.clock, self.holder, lease_seconds)
        path = lock_file(c.engine, ".scheduler.lock")
        self.file_lock = FileLock(path) if path is not None and fcntl is not None else None
        self.tick_seconds = tick_seconds
        self._held_until: datetime | None = None   # of the last renewal; jobs start only before it
        self._blocked = False                      # by the file lock: said once, not every tick
        self._tick_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def leading(self) -> bool:
        """This process holds the lease (as of its last renewal, which has not run out) and runs the jobs."""
        return self._held_until is not None and self._held_until > self.c.clock.now()

    def _guarded(self, job_id: str, fn):
        """A job that starts only while the lease is ours: a holder that stalled past its lease (and
        was replaced) must not fire a slot on waking, before its next tick tells it."""
        @functools.wraps(fn)
        def run(*args, **kwargs):
            if not self.leading:
                log.info("job %s not run: this process no longer holds the scheduler lease", job_id)
                return None
            return fn(*args, **kwargs)
        return run

    def _add(self, job_id: str, fn, trigger, **kw) -> None:
        if not self.aps.get_job(job_id):
            self.aps.add_job(self._guarded(job_id, fn), trigger, id=job_id, **kw)

    def _add_jobs(self) -> None:
        c, tz = self.c, self.c.settings.tz
        # every minute, and at once on start: chains whose deadline passed while down close now
        self._add("close_due_chains", close_due_chains, "interval", minutes=1, args=[c], next_run_time=c.clock.now())
        self._add("qr_check", c.check_qr, "interval", minutes=5)
        b = c.settings.broadcast
        for slot in b.slots:
            hh, mm = map(int, slot.split(":"))
            self._add(f"slot:{slot}", run_slot, CronTrigger(hour=hh, minute=mm, timezone=tz), args=[c, slot],
                      misfire_grace_time=b.misfire_grace_minutes * 60)
        # Taken over (or started) inside a slot's grace: a new cron job would wait for tomorrow, so fire
        # that slot now. run_slot is idempotent per (day, slot, group): a slot the old holder fired
        # sends nothing twice.
        now = c.clock.now().astimezone(tz)
        for slot in missed_slots(b.slots, now, b.misfire_grace_minutes):
            log.info("slot %s fell in the takeover gap: firing it now", slot)
            self._add(f"catch_up:{now.date()}:{slot}", run_slot, "date", args=[c, slot])
        self._add("broadcast_follow_up", follow_up_broadcasts, "interval", minutes=b.follow_up_minutes, args=[c])
        self._add("reload_calendar", reload_calendar, "interval", seconds=10, args=[c])
        self._add("refresh_group_qr_media", refresh_group_qr_media, "interval", hours=6, args=[c],
                  next_run_time=c.clock.now())
        # one app message per clerk (and the chain-wide one to ops) about yesterday; a late one is still
        # worth sending, and a second run sends nothing new
        hh, mm = map(int, c.settings.digest.time.split(":"))
        self._add("digest", send_morning_digest, CronTrigger(hour=hh, minute=mm, timezone=tz), args=[c],
                  misfire_grace_time=DIGEST_GRACE_MINUTES * 60)
        if missed_slots([c.settings.digest.time], now, DIGEST_GRACE_MINUTES):   # taken over after it: as a slot
            self._add(f"catch_up:{now.date()}:digest", send_morning_digest, "date", args=[c])
        # at night, when nobody adds clerks: its batches still yield SQLite's write lock between them
        self._add("retention", purge_old_rows, CronTrigger(hour=3, minute=30, timezone=tz), args=[c],
                  misfire_grace_time=3 * 3600)

    # -- election --------------------------------------------------------------------------
    def tick(self) -> bool:
        """One election round (the thread of start() runs it every tick_seconds; tests call it):
        take or renew the lease, then start, resume or pause the jobs. Returns `leading`."""
        with self._tick_lock:
            if self.file_lock is not None and not self.file_lock.try_acquire(self.holder):
                if not self._blocked:
                    log.warning("another process holds the scheduler lock %s (%s); this one runs no scheduled "
                                "jobs", self.file_lock.path, self.file_lock.owner())
                    self._blocked = True
                self._step_down("the scheduler file lock is another process's")
                return False
            if self._blocked:
                log.info("scheduler file lock %s taken: standing by for the lease", self.file_lock.path)
                self._blocked = False
            try:
                until = self.lease.take_or_renew()
            except SQLAlchemyError as e:
                log.warning("scheduler lease not renewed: %s", type(e).__name__)
                self._step_down("the lease could not be renewed", release_file_lock=True)
                return False
            if until is None:
                self._step_down("another process holds the lease", release_file_lock=True)
                return False
            self._lead(until)
            return True

    def _lead(self, until: datetime) -> None:
        self._held_until = until
        if self.aps.state == STATE_RUNNING:
            return
        if self.aps.state == STATE_PAUSED:
            log.info("scheduler lease taken back (%s): scheduled jobs resumed", self.holder)
            self.aps.resume()
            return
        log.info("scheduler lease taken (%s): running the scheduled jobs (%s)", self.holder, self.c.settings.timezone)
        try:
            close_due_chains(self.c)  # catch up at once: chains whose deadline passed while down
        except SQLAlchemyError as e:
            log.warning("chains due while down not closed yet (%s); the minute job retries", type(e).__name__)
        self._add_jobs()
        self.aps.start()

    def _step_down(self, why: str, release_file_lock: bool = False) -> None:
        was_leading = self._held_until is not None
        self._held_until = None
        if self.aps.state == STATE_RUNNING:
            self.aps.pause()
            log.warning("scheduler lease lost (%s): scheduled jobs paused", why)
        # A holder that lost the lease lets another process on this file compete; a standby that
        # waits for a dead holder's lease to run out keeps its place.
        if release_file_lock and was_leading and self.file_lock is not None:
            self.file_lock.release()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="scheduler-lease", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:   # noqa: BLE001 — the loop must outlive any one round; the next retries
                log.exception("scheduler tick failed")
                self._step_down("the tick failed")
            self._stop.wait(self.tick_seconds)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.tick_seconds)
            self._thread = None
        with self._tick_lock:
            if self.aps.running:
                self.aps.shutdown(wait=False)
            if self._held_until is not None:
                self._held_until = None
                try:
                    self.lease.release()
                except SQLAlchemyError as e:
                    log.warning("scheduler lease not released (%s): it runs out in %ss", type(e).__name__,
                                self.lease.seconds)
            if self.file_lock is not None:
                self.file_lock.release()
