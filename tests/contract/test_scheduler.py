"""Scheduled jobs; one scheduler per database, re-checked every tick; migrations under a lock
(reliability issue, item 7)."""

import logging
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
from apscheduler.schedulers.base import STATE_PAUSED, STATE_RUNNING, STATE_STOPPED
from sqlalchemy import event, select, text

from bot.bootstrap import bootstrap
from bot.clock import SHANGHAI, FakeClock
from bot.db.engine import make_engine
from bot.db.migrate import MIGRATE_LOCK_KEY, current, lock_file, upgrade
from bot.scheduler import LEASE_SECONDS, TICK_SECONDS, Scheduler, refresh_group_qr_media, scheduler_status

ROOT = Path(__file__).resolve().parents[2]
HEAD = max(p.name[:4] for p in (ROOT / "bot" / "db" / "migrations" / "versions").glob("0*.py"))
# a dead holder's lease runs out, then the standby's next tick takes it
TAKEOVER_TICKS = LEASE_SECONDS // TICK_SECONDS + 1


def test_group_qr_media_is_uploaded_again_before_expiry(synced):
    h = synced
    uploads = h.backend.calls["media/upload"]
    assert refresh_group_qr_media(h.c) == 2
    assert h.backend.calls["media/upload"] == uploads          # still fresh: nothing to do
    h.clock.advance(days=2, hours=13)
    refresh_group_qr_media(h.c)
    assert h.backend.calls["media/upload"] == uploads + 2


def test_jobs_are_added_only_when_missing(harness):
    s = Scheduler(harness.c)
    s._add_jobs()
    s._add_jobs()
    assert sorted(j.id for j in s.aps.get_jobs()) == [
        "broadcast_follow_up", "close_due_chains", "digest", "qr_check", "refresh_group_qr_media", "reload_calendar",
        "retention", "slot:10:00", "slot:12:00", "slot:16:00", "slot:20:00"]
    slot = s.aps.get_job("slot:12:00")
    assert str(slot.trigger.timezone) == "Asia/Shanghai" and slot.misfire_grace_time == 600
    assert [str(f) for f in slot.trigger.fields if f.name in ("hour", "minute")] == ["12", "0"]
    purge = s.aps.get_job("retention")
    assert str(purge.trigger.timezone) == "Asia/Shanghai"
    assert [str(f) for f in purge.trigger.fields if f.name in ("hour", "minute")] == ["3", "30"]
    defaults = s.aps._job_defaults
    assert defaults["coalesce"] and defaults["misfire_grace_time"] == 300
    assert str(s.aps.timezone) == "Asia/Shanghai"


class Process:
    """What another `serve` holds: its own engine (so its own connections), container and scheduler,
    on the harness's database and clock."""

    def __init__(self, h, clock=None):
        self.engine = make_engine(h.database_url)
        self.down = False
        self.pids: set[int] = set()
        event.listen(self.engine, "do_connect", self._connect)
        if self.engine.dialect.name == "postgresql":
            event.listen(self.engine, "connect", self._record_pid)
        self.c = bootstrap(h.cfg, clock=clock or h.clock, engine=self.engine)
        self.scheduler = Scheduler(self.c)

    def _connect(self, dialect, conn_rec, cargs, cparams):
        if self.down:
            raise dialect.loaded_dbapi.OperationalError("database unreachable (test)")

    def _record_pid(self, dbapi_conn, conn_rec):
        cur = dbapi_conn.cursor()
        cur.execute("SELECT pg_backend_pid()")
        self.pids.add(cur.fetchone()[0])
        cur.close()

    def drop_connections(self, admin_engine) -> None:
        """PostgreSQL: the server terminates every connection this process has open (its pool
        still holds them)."""
        with admin_engine.connect() as conn:
            for pid in self.pids:
                conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
            conn.commit()

    def cut_off(self, admin_engine) -> None:
        """Its connections drop and new ones fail."""
        self.down = True
        if self.pids:
            self.drop_connections(admin_engine)
        self.engine.dispose()

    def die(self) -> None:
        """As kill -9: its threads stop and the kernel closes its files; the lease row stays."""
        self.scheduler.aps.shutdown(wait=False)
        if self.scheduler.file_lock is not None:
            self.scheduler.file_lock.release()

    def close(self) -> None:
        self.down = False
        self.scheduler.stop()
        self.c.close()


@pytest.fixture
def processes(harness):
    made = []

    def make(**kw) -> Process:
        made.append(Process(harness, **kw))
        return made[-1]
    yield make
    for p in made:
        p.close()


def tick_all(clock, *schedulers) -> list[bool]:
    clock.advance(seconds=TICK_SECONDS)
    return [s.tick() for s in schedulers]


def close_job_runs(s: Scheduler) -> bool:
    """Run the close_due_chains job as APScheduler would: None when it declined to run."""
    job = s.aps.get_job("close_due_chains")
    return job.func(*job.args) is not None


def test_two_schedulers_on_one_database_only_one_runs_jobs(harness, processes, caplog):
    h = harness
    a, b = processes().scheduler, processes().scheduler
    with caplog.at_level(logging.WARNING, logger="bot.scheduler"):
        assert [a.tick(), b.tick()] == [True, False]
        for _ in range(6):
            assert tick_all(h.clock, a, b) == [True, False]
    assert a.aps.state == STATE_RUNNING and close_job_runs(a)
    assert b.aps.state == STATE_STOPPED and b.aps.get_jobs() == []
    status = scheduler_status(h.c.sessions, h.clock)
    assert status.holder == a.holder and status.age_seconds == 0
    said = [r.getMessage() for r in caplog.records if "another process holds the scheduler lock" in r.getMessage()]
    if h.c.engine.dialect.name == "sqlite":
        assert len(said) == 1 and "this one runs no scheduled jobs" in said[0]
        assert str(lock_file(h.c.engine, ".scheduler.lock")) in said[0]
    else:
        assert said == []          # no file lock on PostgreSQL: the lease alone


def test_a_standby_takes_over_within_a_minute_when_the_holder_dies(harness, processes):
    h = harness
    a, b = processes(), processes()
    assert [a.scheduler.tick(), b.scheduler.tick()] == [True, False]
    a.die()
    died_at = h.clock.timestamp()
    ticks = 0
    while not b.scheduler.tick():
        ticks += 1
        assert ticks <= TAKEOVER_TICKS
        h.clock.advance(seconds=TICK_SECONDS)
    assert h.clock.timestamp() - died_at < 60
    assert b.scheduler.aps.state == STATE_RUNNING and close_job_runs(b.scheduler)
    assert scheduler_status(h.c.sessions, h.clock).holder == b.scheduler.holder


def test_a_holder_cut_off_from_the_database_pauses_its_jobs_and_the_standby_takes_over(harness, processes):
    """Its connections dropped (PostgreSQL: pg_terminate_backend) and none to be had: it cannot
    renew, so it pauses at once, and its jobs decline to run even if APScheduler fires one."""
    h = harness
    a, b = processes(), processes()
    assert [a.scheduler.tick(), b.scheduler.tick()] == [True, False]
    a.cut_off(h.c.engine)
    assert a.scheduler.tick() is False
    assert a.scheduler.aps.state == STATE_PAUSED and not close_job_runs(a.scheduler)
    ticks = 0
    while not b.scheduler.tick():
        ticks += 1
        assert ticks <= TAKEOVER_TICKS
        assert a.scheduler.tick() is False
        h.clock.advance(seconds=TICK_SECONDS)
    a.down = False                                # its database is back: the lease is b's now
    for _ in range(3):
        assert tick_all(h.clock, a.scheduler, b.scheduler) == [False, True]
    assert a.scheduler.aps.state == STATE_PAUSED and b.scheduler.aps.state == STATE_RUNNING


@pytest.mark.pg
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)   # terminating a server connection
def test_a_holder_whose_connection_was_terminated_checks_again_and_stays_the_only_one(harness, processes):
    """The old one-shot advisory lock died with its connection and nobody noticed: a second process
    was then elected beside the first. The lease is checked on every tick, on whatever connection."""
    h = harness
    a, b = processes(), processes()
    assert [a.scheduler.tick(), b.scheduler.tick()] == [True, False]
    a.drop_connections(h.c.engine)                # the server is still there: a reconnects
    assert a.pids
    for _ in range(TAKEOVER_TICKS + 2):
        assert tick_all(h.clock, a.scheduler, b.scheduler) == [True, False]


def test_a_clean_stop_hands_over_at_the_next_tick(processes):
    a, b = processes(), processes()
    assert [a.scheduler.tick(), b.scheduler.tick()] == [True, False]
    a.scheduler.stop()
    assert b.scheduler.tick() is True


def config_for(tmp_path: Path, h) -> Path:
    p = tmp_path / "serve.yaml"
    w = h.cfg.wecom
    p.write_text(f"""
database_url: "{h.database_url}"
admin_token: serve-test-token
calendar_dir: {ROOT / 'content_calendar'}
wecom:
  corp_id: {w.corp_id}
  agent_id: {w.agent_id}
  secret: {w.secret.get_secret_value()}
  token: {w.token.get_secret_value()}
  encoding_aes_key: {w.encoding_aes_key.get_secret_value()}
  api_base_url: {w.api_base_url}
stores:
  - {{code: SZ001, name: 深圳科技园店, clerks: [zhangsan]}}
""", encoding="utf-8")
    return p


def test_a_second_process_runs_no_jobs_until_the_first_is_killed(harness, processes, tmp_path, caplog):
    """A real `serve --role scheduler`, then this process beside it; kill -9 of the serve."""
    h = harness
    log_file = open(tmp_path / "serve.log", "w")
    serve = subprocess.Popen([sys.executable, "-m", "bot", "--config", str(config_for(tmp_path, h)),
                              "serve", "--role", "scheduler"], cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60          # the subprocess start: imports, migrations
        while f":{serve.pid}:" not in (scheduler_status(h.c.sessions, FakeClock(datetime.now(SHANGHAI))).holder or ""):
            assert serve.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.1)
        clock = FakeClock(datetime.now(SHANGHAI))  # the serve's lease is in wall time
        b = processes(clock=clock).scheduler
        with caplog.at_level(logging.WARNING, logger="bot.scheduler"):
            assert b.tick() is False
        if h.c.engine.dialect.name == "sqlite":
            assert any("another process holds the scheduler lock" in r.getMessage() and f":{serve.pid}:" in
                       r.getMessage() for r in caplog.records)
        serve.send_signal(signal.SIGKILL)
        serve.wait()
        clock.advance(seconds=max(0.0, time.time() - clock.timestamp()))
        ticks = 0
        while not b.tick():
            ticks += 1
            assert ticks <= TAKEOVER_TICKS
            clock.advance(seconds=TICK_SECONDS)
        assert b.aps.state == STATE_RUNNING
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
        log_file.close()
    assert "Traceback" not in (tmp_path / "serve.log").read_text()


# -- migrations ----------------------------------------------------------------------------------

def versions(engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())


def test_concurrent_migrations_from_threads_on_a_fresh_database_all_succeed(db_url):
    engines = [make_engine(db_url) for _ in range(6)]
    start, errors = threading.Barrier(len(engines)), []

    def migrate(engine):
        start.wait()
        try:
            upgrade(engine)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=migrate, args=(e,), daemon=True) for e in engines]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)   # a failsafe only: unlocked, they deadlock on PostgreSQL
        assert not any(t.is_alive() for t in threads) and not errors
        assert versions(engines[0]) == [HEAD]
    finally:
        for e in engines:
            e.dispose()


def test_concurrent_migrations_from_processes_on_a_fresh_database_all_succeed(db_url):
    code = "import sys; from bot.db.engine import make_engine; from bot.db.migrate import upgrade; " \
           "upgrade(make_engine(sys.argv[1]))"
    procs = [subprocess.Popen([sys.executable, "-c", code, db_url], cwd=ROOT, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    engine = make_engine(db_url)
    try:
        failures = [err for p in procs for err in [p.communicate(timeout=120)[1]] if p.returncode != 0]
        assert not failures, failures[0]
        assert versions(engine) == [HEAD] and current(engine) == HEAD
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        engine.dispose()


def test_a_migration_waits_for_the_one_in_progress(db_url):
    """Holding the lock as another process migrating would: the upgrade does not start until it goes."""
    engine = make_engine(db_url)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (upgrade(engine), done.set()))
    try:
        if engine.dialect.name == "postgresql":
            holder = engine.connect()
            holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATE_LOCK_KEY})
            holder.commit()
            release = lambda: (holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATE_LOCK_KEY}),  # noqa: E731
                               holder.commit(), holder.close())
        else:
            import fcntl
            path = lock_file(engine, ".migrate.lock")
            held = open(path, "a")
            fcntl.flock(held, fcntl.LOCK_EX)
            release = held.close
        worker.start()
        worker.join(0.5)
        assert not done.is_set() and current(engine) is None   # still waiting, nothing migrated
        release()
        worker.join()
        assert done.is_set() and current(engine) == HEAD
    finally:
        engine.dispose()


def fired(h, slot: str) -> bool:
    from bot.db.models import SlotDelivery

    with h.c.sessions() as s:
        return bool(s.scalars(select(SlotDelivery).where(SlotDelivery.slot == slot,
                                                         SlotDelivery.status != "planned")).first())


def test_a_takeover_inside_a_slots_grace_fires_that_slot_once(synced, processes):
    """A new cron job's next run is tomorrow's: a slot whose time fell in the takeover gap was lost for
    every store. The new holder fires it (run_slot is idempotent: what was fired sends nothing twice)."""
    from bot.scheduler import missed_slots, run_slot

    h = synced
    h.clock.advance(seconds=(10 * 60 + 3 - 9 * 60) * 60)            # Monday 09:00 → 10:03
    a, b = processes(), processes()
    assert [a.scheduler.tick(), b.scheduler.tick()] == [True, False]
    # a one-off job, run at once on APScheduler's own thread
    deadline = time.monotonic() + 20
    while not fired(h, "10:00"):
        assert time.monotonic() < deadline, "the missed 10:00 slot was not fired"
        time.sleep(0.05)
    assert run_slot(h.c, "10:00").groups == 0                              # fired once, not twice
    assert not fired(h, "12:00")
    tz = h.c.settings.tz
    now = h.clock.now().astimezone(tz)
    assert missed_slots(["10:00", "12:00"], now, 10) == ["10:00"]
    assert missed_slots(["10:00"], now.replace(hour=10, minute=10), 10) == []
    assert missed_slots(["10:00"], now.replace(hour=9, minute=59), 10) == []
