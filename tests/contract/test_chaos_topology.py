"""The scale-out topology under kill -9 (issue 16): 2 `--role web` + 2 `--role worker` + 1 `--role
scheduler` processes on PostgreSQL against the sandbox, with the sandbox's per-API limit lowered so it
binds (and the bot's `wecom.calls_per_minute` set to the same figure). A 500-add burst spread over both
web ports and a slot for 2,000 groups; a worker and the scheduler are killed mid-slot and started again.

What must hold, by the sandbox's own counts and the bot's tables: every acknowledged add welcomed
exactly once or recorded expired; every group's slot delivered once (one mass-message task per sender,
no group in two); zero 45009 at the sandbox; and one scheduler at every moment, read from the
`scheduler_lease` row the scheduler renews every tick (sampled throughout: a new holder's first
heartbeat is never before the previous holder's lease ran out) and from the schedulers' own log
lines. A scheduler whose database connection is cut (pg_terminate_backend) is covered in
tests/contract/test_scheduler.py (test_a_holder_whose_connection_was_terminated_…)."""

from __future__ import annotations

import json
import random
import threading
from collections import Counter
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select

from bot.bootstrap import bootstrap
from bot.clock import SHANGHAI
from bot.db.engine import make_engine, make_session_factory
from bot.db.models import Outbox, SchedulerLease, SlotDelivery, Welcome, WeComRate
from bot.sandbox.driver import Driver
from bot.sandbox.rules import Rules
from bot.scheduler import LEASE_NAME
from bot.serving import free_port
from tests.contract.test_chaos import MASS_EVERY_10, seed_chain, setting_up, wait_until
from tests.contract.test_serve_roles import Served

pytestmark = pytest.mark.slow

N_STORES, N_GROUPS, N_ADDS, BURST_STORES = 400, 2000, 500, 10
LIMIT = 400   # calls per API per minute, at the sandbox and in the bot's config: 400 mass-message tasks bind it


class LeaseLog:
    """Samples the scheduler_lease row every 0.1 s: each distinct (holder, heartbeat_at, lease_until)."""

    def __init__(self, sessions):
        self.sessions = sessions
        self.rows: list[tuple[str | None, datetime | None, datetime | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self.sessions() as s:
                row = s.get(SchedulerLease, LEASE_NAME)
                seen = (row.holder, row.heartbeat_at, row.lease_until) if row else None
            if seen and (not self.rows or self.rows[-1] != seen):
                self.rows.append(seen)
            self._stop.wait(0.1)

    def start(self) -> LeaseLog:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def holders(self) -> list[str]:
        out = []
        for holder, _, _ in self.rows:
            if holder and (not out or out[-1] != holder):
                out.append(holder)
        return out

    def overlaps(self) -> list[str]:
        """Takeovers where the new holder's first heartbeat came before the old holder's lease ran out."""
        bad, last = [], None   # last: (holder, lease_until) of the latest holder seen
        for holder, beat, until in self.rows:
            if holder is None:
                last = None        # released cleanly
                continue
            if last and last[0] != holder and beat < last[1]:
                bad.append(f"{holder} took over at {beat} while {last[0]} held until {last[1]}")
            last = (holder, until)
        return bad


def statuses(sessions, model, column=None) -> dict:
    column = column or model.status
    with sessions() as s:
        return dict(s.execute(select(column, func.count()).group_by(column)).all())


@pytest.mark.pg   # PostgreSQL only: on SQLite one serve runs per database file (tests/contract/test_serve_roles.py)
def test_two_web_two_workers_one_scheduler_killed_mid_slot_deliver_everything_once(pg_url, tmp_path):
    db_url = pg_url
    # The slot is the current minute of today, so the test must finish on the day it starts: within
    # half an hour of midnight in Shanghai the chain runs on India's time instead (2.5 h behind).
    timezone = "Asia/Shanghai" if datetime.now(SHANGHAI).strftime("%H:%M") < "23:30" else "Asia/Kolkata"
    stores = [{"code": f"S{i:04d}", "name": f"门店{i}", "clerks": [f"c{i:04d}"]} for i in range(N_STORES)]
    backend, sandbox, settings, bot = setting_up(db_url, tmp_path, stores, Rules(groupmsg_confirm="manual"), timezone)
    engine = make_engine(db_url)
    sessions = make_session_factory(engine)
    procs: list[Served] = []
    lease_log = LeaseLog(sessions)
    try:
        rng = random.Random(16)
        now = seed_chain(backend, engine, sessions, stores, N_GROUPS, settings.tz, rng)
        c = bootstrap(settings)                     # QR codes for the stores the burst adds through
        assert not c.provisioner().sync(settings.stores[:BURST_STORES]).failed
        c.close()
        # From here the limit binds. The set-up's calls were counted on both sides (the sandbox and the
        # bot's wecom_rate), so both start from the same counts.
        backend.rules.update(per_api_per_minute=LIMIT)
        slot = now.strftime("%H:%M")                # passed by seconds: the scheduler fires it as it takes the lease
        raw = json.loads(bot.cfg.read_text(encoding="utf-8"))
        raw["wecom"]["calls_per_minute"] = LIMIT
        # a slot whose time passed within the grace is fired on taking the lease: by both schedulers here
        raw["broadcast"] = {"slots": [slot], "misfire_grace_minutes": 30}
        bot.cfg.write_text(json.dumps(raw, ensure_ascii=False), encoding="utf-8")
        calendar = tmp_path / "content_calendar" / "default.yaml"
        calendar.write_text(MASS_EVERY_10.replace('"10:00"', f'"{slot}"').replace(
            '    "12:00": {kind: story, text: "{{ store.name }}午间好物"}\n', ""), encoding="utf-8")

        web = [Served(bot.cfg, bot.port, tmp_path / "web-1.log", "web", db_url),
               Served(bot.cfg, free_port(), tmp_path / "web-2.log", "web", db_url)]
        workers = [Served(bot.cfg, free_port(), tmp_path / f"worker-{i}.log", "worker", db_url) for i in (1, 2)]
        scheduler = Served(bot.cfg, free_port(), tmp_path / "scheduler.log", "scheduler", db_url)
        procs = [*web, *workers, scheduler]
        for p in web + workers:
            p.start(wait=False)
        for p in web + workers:
            p.wait_ready()
        lease_log.start()

        # the burst, over both web ports
        codes = [st["code"] for st in stores[:BURST_STORES]]
        states = [rng.choice(codes) for _ in range(N_ADDS)]
        results: list = []
        bursts = [threading.Thread(target=lambda d=Driver(backend, f"http://127.0.0.1:{w.port}/wecom/callback"),
                                   part=states[i::2]: results.extend(d.burst(part, concurrency=8)))
                  for i, w in enumerate(web)]
        for b in bursts:
            b.start()
        assert wait_until(lambda: len(backend.welcomes) >= 50, 60)

        # the scheduler takes the lease and fires the slot; killed as soon as the slot is planned
        scheduler.start()
        with sessions() as s:
            first_holder = s.get(SchedulerLease, LEASE_NAME).holder

        def planned() -> bool:
            with sessions() as s:
                return s.scalar(select(func.count()).select_from(SlotDelivery)) > 0
        assert wait_until(planned, 60)
        scheduler.kill9()
        slot_at_kill = statuses(sessions, SlotDelivery)
        outbox_at_kill = statuses(sessions, Outbox)
        scheduler.start(wait=False)                 # a standby until the killed one's lease runs out

        # a worker, killed mid-slot: mass-message tasks going out, more waiting
        def mid_slot() -> bool:
            sent = backend.calls["externalcontact/add_msg_template"]
            with sessions() as s:
                waiting = s.scalar(select(func.count()).select_from(Outbox).where(
                    Outbox.kind == "add_msg_template", Outbox.status.in_(("pending", "running"))))
            return sent >= 50 and waiting > 0
        assert wait_until(mid_slot, 150), (statuses(sessions, Outbox), dict(backend.calls))
        workers[0].kill9()
        worker_kill = statuses(sessions, Outbox)
        workers[0].start(wait=False)
        for b in bursts:
            b.join(120)
        acked = [d for d in results if d.kind.startswith("change_external_contact") and d.acked]
        assert len(acked) >= N_ADDS * 0.95, (len(acked), Counter(str(d.statuses) for d in results))

        def settled() -> bool:
            with sessions() as s:
                open_rows = s.scalar(select(func.count()).select_from(Outbox).where(
                    Outbox.status.in_(("pending", "running", "unknown")),
                    Outbox.next_attempt_at < datetime.now(settings.tz) + timedelta(minutes=5)))
                welcoming = s.scalar(select(func.count()).select_from(Welcome).where(
                    Welcome.status.in_(("pending", "queued"))))
                groups = s.scalar(select(func.count(func.distinct(SlotDelivery.chat_id)))
                                  .where(SlotDelivery.slot == slot, SlotDelivery.status.not_in(("planned", "queued"))))
            return open_rows == 0 and welcoming == 0 and groups == N_GROUPS
        assert wait_until(settled, 240), (statuses(sessions, Outbox), statuses(sessions, SlotDelivery),
                                          scheduler.log.read_text(errors="replace")[-3000:])
        lease_log.stop()

        # -- welcomes: each acknowledged add once at WeCom, or recorded expired ----------------
        times = Counter(w["welcome_code"] for w in backend.welcomes)
        assert times and max(times.values()) == 1, times.most_common(3)
        delivered = Counter(w["external_userid"] for w in backend.welcomes)
        with sessions() as s:
            status = dict(s.execute(select(Welcome.external_userid, Welcome.status)).all())
        # "unknown" is expired too, told apart because an attempt's answer was lost (a worker killed with
        # the call in flight): WeCom may have delivered it, so the bot does not claim either way
        for d in acked:
            ext = d.fields["ExternalUserID"]
            assert delivered[ext] == 1 or status.get(ext) in ("expired", "unknown"), (ext, status.get(ext))
        assert not [u for u, st in status.items() if st == "expired" and delivered[u]], "expired though delivered"
        assert {u for u, st in status.items() if st in ("sent", "already")} <= set(delivered)

        # -- the slot: every group once ----------------------------------------------------------
        senders = Counter(t["creator"] for t in backend.templates.values())
        assert len(senders) == N_STORES and max(senders.values()) == 1, senders.most_common(3)
        targets = Counter(chat for t in backend.templates.values() for chat in t["targets"])
        assert targets and max(targets.values()) == 1, targets.most_common(3)      # no group in two tasks
        reminders = Counter((m["touser"], json.dumps(m.get("textcard"), sort_keys=True))
                            for m in backend.app_messages if m["msgtype"] == "textcard" and not m["dropped"])
        assert not reminders or max(reminders.values()) == 1

        # -- the shared limit held, and bound --------------------------------------------------
        limited = {k: n for k, n in backend.errors.items() if k.endswith(":45009")}
        assert not limited, limited
        with sessions() as s:
            busiest = s.execute(select(WeComRate.endpoint, func.max(WeComRate.calls)).where(
                WeComRate.window_seconds == 60).group_by(WeComRate.endpoint)).all()
        assert max(n for _, n in busiest) <= LIMIT

        # -- one scheduler at every moment -----------------------------------------------------
        holders = lease_log.holders()
        assert len(holders) == 2 and holders[0] == first_holder and f":{scheduler.proc.pid}:" in holders[1], holders
        assert not lease_log.overlaps(), lease_log.overlaps()
        log_text = scheduler.log.read_text(errors="replace")
        assert log_text.count("scheduler lease taken (") == 2, log_text[-3000:]   # the killed one, its successor
        assert log_text.count("fell in the takeover gap") == 2, log_text[-3000:]  # each fired the slot once
        for w in web + workers:                                                  # and nobody else led
            assert "scheduler lease taken" not in w.log.read_text(errors="replace")
        assert all(p.proc.poll() is None for p in procs)
        expired = Counter(st for st in status.values() if st in ("expired", "unknown"))
        print(f"acked {len(acked)}, welcomed {len(delivered)}, expired {dict(expired)}; slot {slot}: at the scheduler's "
              f"kill {slot_at_kill} / outbox {outbox_at_kill}; at the worker's kill {worker_kill}; busiest minute "
              f"per API {dict(busiest)}; lease holders {holders}")
    finally:
        lease_log.stop()
        for p in procs:
            p.stop()
        sandbox.stop()
        engine.dispose()
