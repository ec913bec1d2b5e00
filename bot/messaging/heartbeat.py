"""Leases that live as long as their worker: the process heartbeat.

A worker promises not to call WeCom for a row after the row's `lease_until`; any process may take
the row back once that time has passed (bot.messaging.claims). So a lease must be short, for a
crashed worker's welcome to come back inside its 20 s, and must not run out under a worker that is
still sending. Both hold because every process that runs workers beats here every BEAT_SECONDS:
one UPDATE renews the leases of the rows its workers hold (RETURNING what it still holds: a row
another worker took is no longer ours; on PostgreSQL a row its worker is settling at that moment is
skipped, not waited for), and the client checks that lease before every attempt
(WeComClient.holding_lease). A process that stalls or loses its database stops renewing and stops
calling before its leases run out.

The beat also records the process in `worker_process`. Each beat takes back at once the claims of a
process that is certainly gone: on this very host (the full hostname), its pid not running here, and
its heartbeat silent for STALE_BEATS beats — a previous run of this process after a kill -9. The
silence is what keeps a live process safe whose hostname and pid only look like a dead one's (pods
of one ReplicaSet are all pid 1; two VMs may share a default hostname): a live process beats. Every
other dead process's rows come back when their leases run out, which is short for a welcome.
/healthz reads the beats.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from datetime import datetime, timedelta

from sqlalchemy import and_, case, delete, literal, select, update
from sqlalchemy.orm import Session, sessionmaker

from bot.clock import Clock
from bot.db.models import Event, Outbox, WorkerProcess

log = logging.getLogger(__name__)

BEAT_SECONDS = 2.0
# A row with a deadline (a welcome) is leased at most this far ahead, and never past its deadline.
SHORT_LEASE_SECONDS = 12.0
FORGET_AFTER = timedelta(days=1)   # worker_process rows of processes gone this long are deleted
STALE_BEATS = 3                    # beats missed before a same-host process whose pid is gone is taken back

_process: tuple[int, str] | None = None
HOST = socket.gethostname()[:64]


def process_id() -> str:
    """host:pid:random of this process (the random part tells a reused pid apart); the prefix of
    every claimed_by it writes. Computed again after a fork."""
    global _process
    if _process is None or _process[0] != os.getpid():
        # short enough for claimed_by (64) with a thread name; the full hostname is in worker_process.host
        _process = (os.getpid(), f"{socket.gethostname()[:24]}:{os.getpid()}:{secrets.token_hex(3)}")
    return _process[1]


def lease_end(model, now: datetime, seconds: float):
    """The SQL value of a new lease_until: `seconds` ahead, and for rows with a deadline no further
    than SHORT_LEASE_SECONDS and the deadline (a lease past it would only hide a dead worker's welcome)."""
    until = now + timedelta(seconds=seconds)
    deadline = getattr(model, "deadline", None)
    if deadline is None:
        return until
    # typed binds: inside CASE a bare datetime would lose the column's UTC conversion
    short = literal(min(until, now + timedelta(seconds=SHORT_LEASE_SECONDS)), model.lease_until.type)
    return case((deadline.is_(None), literal(until, model.lease_until.type)), (deadline < short, deadline), else_=short)


class LeaseBook:
    """The rows this process's workers hold now, with the lease each was last confirmed to."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[tuple[str, int], tuple[str, datetime]] = {}

    def hold(self, model, owner: str, rows: list) -> None:
        with self._lock:
            for r in rows:
                self._held[(model.__tablename__, r.id)] = (owner, r.lease_until)

    def release(self, model, ids) -> None:
        with self._lock:
            for i in ids:
                self._held.pop((model.__tablename__, i), None)

    def until(self, model, row_id: int) -> datetime | None:
        with self._lock:
            held = self._held.get((model.__tablename__, row_id))
        return held[1] if held else None

    def owners(self, model) -> dict[str, list[int]]:
        with self._lock:
            out: dict[str, list[int]] = {}
            for (table, i), (owner, _) in self._held.items():
                if table == model.__tablename__:
                    out.setdefault(owner, []).append(i)
            return out

    def confirm(self, model, owner: str, asked: list[int], renewed: dict[int, datetime]) -> list[int]:
        """Record a renewal; the ids asked for that were not renewed (taken by another worker) are
        dropped and returned."""
        lost = []
        with self._lock:
            for i in asked:
                key = (model.__tablename__, i)
                if key not in self._held:
                    continue                       # settled meanwhile
                if i in renewed:
                    self._held[key] = (owner, renewed[i])
                else:
                    lost.append(i)
                    del self._held[key]
        return lost


class Heartbeat:
    """Beats for one process: renews its workers' leases, records it in worker_process."""

    MODELS = (Outbox, Event)

    def __init__(self, sessions: sessionmaker[Session], clock: Clock, book: LeaseBook, *, role: str,
                 lease_seconds: float, beat_seconds: float = BEAT_SECONDS):
        self.sessions = sessions
        self.clock = clock
        self.book = book
        self.role = role
        self.lease_seconds = lease_seconds
        self.beat_seconds = beat_seconds
        self.id = process_id()
        self.started_at = clock.now()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- start and stop ---------------------------------------------------------------------
    def start(self) -> None:
        self.beat()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        try:
            with self.sessions.begin() as s:
                s.execute(delete(WorkerProcess).where(WorkerProcess.id == self.id))
        except Exception:   # stopping with the database gone: the row ages out
            log.warning("heartbeat: could not remove worker_process %s", self.id)

    def _loop(self) -> None:
        while not self._stop.wait(self.beat_seconds):
            try:
                self.beat()
            except Exception as e:   # the database went away: leases stop being renewed, so workers stop calling
                log.warning("heartbeat failed (%s: %s): leases not renewed", type(e).__name__,
                            str(e).splitlines()[0][:200] if str(e) else "")

    # -- one beat ---------------------------------------------------------------------------
    def beat(self) -> None:
        now = self.clock.now()
        with self.sessions.begin() as s:
            # merge, not update: a row deleted meanwhile (aged out, an operator) comes back
            s.merge(WorkerProcess(id=self.id, host=HOST, pid=os.getpid(), role=self.role,
                                  started_at=self.started_at, beat_at=now))
            for model in self.MODELS:
                for owner, ids in self.book.owners(model).items():
                    mine = select(model.id).where(model.id.in_(ids), model.claimed_by == owner,
                                                  model.status == "running")
                    if s.get_bind().dialect.name == "postgresql":
                        # Rows a worker is settling right now are locked by it: skipped, not waited for.
                        # Waiting deadlocked (the settle's batch and this UPDATE lock rows in different
                        # orders), and the aborted beat left every lease unrenewed.
                        mine = mine.with_for_update(skip_locked=True)
                    renewed = dict(s.execute(
                        update(model).where(model.id.in_(mine))
                        .values(lease_until=lease_end(model, now, self.lease_seconds))
                        .returning(model.id, model.lease_until).execution_options(synchronize_session=False)).all())
                    missing = [i for i in ids if i not in renewed]
                    # still ours as last committed: skipped above (being settled), its lease still stands
                    skipped = set(s.scalars(select(model.id).where(
                        model.id.in_(missing), model.claimed_by == owner, model.status == "running"))) if missing else set()
                    taken = set(s.scalars(select(model.id).where(
                        model.id.in_(missing), model.claimed_by.is_not(None), model.claimed_by != owner))) if missing else set()
                    lost = self.book.confirm(model, owner, [i for i in ids if i not in skipped], renewed)
                    # the others were settled (or given back) by their worker while this beat ran: not a loss
                    lost = [i for i in lost if i in taken]
                    if lost:
                        log.warning("%s: lease of %s rows %s lost to another worker", owner, model.__tablename__, lost)
            s.execute(delete(WorkerProcess).where(WorkerProcess.beat_at < now - FORGET_AFTER))
        taken = self.take_back_dead_on_this_host(now)
        if taken:
            log.warning("took back %d rows claimed by a process of this host that is gone", taken)

    def take_back_dead_on_this_host(self, now: datetime) -> int:
        """Rows claimed by processes of this host that are certainly gone (pid not running here and
        silent for STALE_BEATS beats): due again now, and an outbox row among them is uncertain (its
        call may have reached WeCom)."""
        silent = now - timedelta(seconds=STALE_BEATS * self.beat_seconds)
        with self.sessions() as s:
            procs = s.execute(select(WorkerProcess.id, WorkerProcess.pid).where(
                WorkerProcess.host == HOST, WorkerProcess.id != self.id, WorkerProcess.beat_at < silent)).all()
        dead = [proc for proc, pid in procs if not _running(pid)]
        return take_back(self.sessions, now, dead) if dead else 0


def take_back(sessions: sessionmaker[Session], now: datetime, process_ids: list[str]) -> int:
    """Hand back the claims of processes known to be gone (nothing of theirs is in flight)."""
    n = 0
    with sessions.begin() as s:
        for pid_ in process_ids:
            mine = and_(Outbox.status == "running", Outbox.claimed_by.like(f"{pid_}/%"))
            n += s.execute(update(Outbox).where(mine).values(
                status="pending", uncertain=True, claimed_by=None, lease_until=None, next_attempt_at=now)
                .execution_options(synchronize_session=False)).rowcount
            n += s.execute(update(Event).where(Event.status == "running", Event.claimed_by.like(f"{pid_}/%"))
                           .values(status="pending", claimed_by=None, lease_until=None, next_attempt_at=now)
                           .execution_options(synchronize_session=False)).rowcount
            s.execute(delete(WorkerProcess).where(WorkerProcess.id == pid_))
    return n


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # someone else's process holds that pid now
        return True
    return True


def workers_alive(session: Session, now: datetime, within: timedelta) -> list[str]:
    """Processes whose heartbeat is younger than `within` (for /healthz)."""
    return list(session.scalars(select(WorkerProcess.id).where(WorkerProcess.beat_at >= now - within)))
