"""Plan and dispatch broadcast slots for a whole chain: 4,800 stores, 25,000 groups, 4,800 clerks.

The sandbox runs as its own process with WeCom's per-API limit (10,000 calls a minute, 45009 past
it); the bot runs here, in-process (planner, dispatcher, outbox workers: what `serve` runs for a
slot). Stores and groups are written to the bot's database as `sync` leaves them (sync itself is
not what is measured). Reported per slot: wall time from firing to the last WeCom call settled,
calls per API, and the rate-limit bound: the least time the limit allows for those calls (the
k-th call of an API cannot start before floor((k-1)/limit) minutes), and the stricter even-rate
reading (calls / limit per minute). `--limit` lowers the limit
on both sides to show the pacing where the limit binds.

    .venv/bin/python scripts/bench_slot.py [--db sqlite|postgresql] [--limit 10000]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import httpx  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from benchlib import free_port, fresh_database, wait_http  # noqa: E402
from bot.sandbox.seed import new_corp  # noqa: E402
from bot.wecom.pacer import UNPACED  # noqa: E402

STORES, GROUPS = 4800, 25000


def child_sandbox(port: int, corp_json: str, limit: int) -> None:
    """The sandbox process: a corp with one clerk per store and 25,000 groups among them."""
    import uvicorn

    from bot.clock import SystemClock
    from bot.sandbox.backend import Corp, WeComBackend
    from bot.sandbox.routes import create_sandbox_app
    from bot.sandbox.rules import Rules

    corp = Corp(**json.loads(corp_json))
    backend = WeComBackend(corp, SystemClock(), Rules(per_api_per_minute=limit, groupmsg_confirm="manual"))
    rng = random.Random(4800)
    for i in range(STORES):
        backend.add_clerk(f"c{i:04d}")
    for g in range(GROUPS):
        owner = f"c{g % STORES:04d}" if g < STORES else f"c{rng.randrange(STORES):04d}"
        backend.create_group(owner, f"门店{g % STORES}福利群{g // STORES + 1}", members=rng.randint(150, 480))
    app = create_sandbox_app(backend)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def bound_seconds(calls: dict[str, int], limit: int) -> float:
    """Least time the per-API limit allows: the last call of each API waits whole windows."""
    return max((math.floor((n - 1) / limit) * 60 for ep, n in calls.items() if n and ep != "message/send"), default=0.0)


def steady_seconds(calls: dict[str, int], limit: int) -> float:
    """The same calls spread evenly at the limit's rate: the stricter reading of the bound."""
    return max((n * 60 / limit for ep, n in calls.items() if n and ep != "message/send"), default=0.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--limit", type=int, default=10_000, help="calls per minute per API (WeCom: 10,000)")
    ap.add_argument("--threads", type=int, default=8, help="outbox worker threads")
    ap.add_argument("--slots", default="10:00,12:00", help="slots to fire, in order (10:00 plans the day)")
    ap.add_argument("--worker-processes", type=int, default=0,
                    help="extra `wecom-bot serve --role worker` processes on the same database (scale-out)")
    args = ap.parse_args()
    if args.worker_processes and args.db == "sqlite":
        sys.exit("--worker-processes needs --db postgresql: on SQLite a second `serve` refuses to start (bot/cli.py)")

    import tempfile

    from bot.bootstrap import bootstrap
    from bot.clock import SystemClock
    from bot.config import Settings
    from bot.db.models import GroupChat, Outbox, SlotDelivery, Store
    from bot.scheduler import run_slot

    corp = new_corp()
    port = free_port()
    env = {**os.environ, "PYTHONPATH": ROOT}
    sandbox = subprocess.Popen([sys.executable, __file__, "--child", str(port), json.dumps(corp.__dict__),
                                str(args.limit)], env=env)
    tmp = tempfile.mkdtemp(prefix="bench-slot-")
    workers: list[subprocess.Popen] = []
    db_url, drop_database = fresh_database(args.db, Path(tmp))
    try:
        wait_http(f"http://127.0.0.1:{port}/_sandbox/state", timeout=120)
        base = f"http://127.0.0.1:{port}"
        state = httpx.get(f"{base}/_sandbox/state", timeout=60).json()
        stores = [{"code": f"S{i:04d}", "name": f"门店{i}", "clerks": [f"c{i:04d}"]} for i in range(STORES)]
        raw = {
            "database_url": db_url, "public_base_url": "http://127.0.0.1:9", "admin_token": "bench-admin-token",
            "calendar_dir": os.path.join(ROOT, "content_calendar"),
            "wecom": {"corp_id": corp.corp_id, "agent_id": corp.agent_id, "secret": corp.secret, "token": corp.token,
                      "encoding_aes_key": corp.encoding_aes_key, "api_base_url": f"{base}/cgi-bin/",
                      # on PostgreSQL every process counts in one shared limit (SqlPacer); on SQLite each
                      # process paces itself, so the limit is split between them
                      "calls_per_minute": args.limit if args.db == "postgresql"
                      else args.limit // (args.worker_processes + 1)},
            "worker": {"threads": args.threads}, "stores": stores}
        settings = Settings.model_validate(raw)
        c = bootstrap(settings, clock=SystemClock(settings.tz), migrate=True)
        now = c.clock.now()
        with c.sessions.begin() as s:
            s.add_all(Store(code=st["code"], name=st["name"], clerks=st["clerks"]) for st in stores)
        with c.sessions.begin() as s:
            s.add_all(GroupChat(chat_id=chat, store_code=f"S{int(g['owner'][1:]):04d}", owner=g["owner"],
                                name=g["name"], member_count=g["members"], synced_at=now)
                      for chat, g in state["groups"].items())
        print(f"{args.db}: {STORES} stores, {len(state['groups'])} groups, {STORES} clerks; "
              f"limit {args.limit}/min per API; {args.threads} outbox threads"
              + (f" here and in each of {args.worker_processes} worker processes" if args.worker_processes else ""))
        c.start_workers()
        if args.worker_processes:
            cfg = os.path.join(tmp, "workers.yaml")
            with open(cfg, "w") as f:
                json.dump(raw, f)  # JSON is YAML
            workers = [subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "wecom-bot"), "--config", cfg,
                                         "serve", "--role", "worker"], env=env)
                       for _ in range(args.worker_processes)]
            time.sleep(3)  # started and polling
            if any(w.poll() is not None for w in workers):
                sys.exit("a worker process did not start")
        # tomorrow's slots: today's may be past their content's `expires` (an afternoon run expired 12:00's)
        day = now.date() + timedelta(days=1)
        calls_before = state["calls"]
        for slot in args.slots.split(","):
            t0, cpu0 = time.perf_counter(), time.process_time()
            report = run_slot(c, slot, day)
            t_plan = time.perf_counter() - t0
            while True:
                with c.sessions() as s:
                    left = s.scalar(select(func.count()).select_from(Outbox).where(
                        Outbox.status.in_(("pending", "running")), Outbox.key.like(f"%:{day}:{slot}:%")))
                if not left:
                    break
                time.sleep(0.2)
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            after = httpx.get(f"{base}/_sandbox/state", timeout=60).json()
            calls = {k: v - calls_before.get(k, 0) for k, v in after["calls"].items() if v - calls_before.get(k, 0)}
            calls_before = after["calls"]
            errors = {k: v for k, v in after["errors"].items()}
            with c.sessions() as s:
                outcome = dict(s.execute(select(Outbox.status, func.count()).where(
                    Outbox.key.like(f"%:{day}:{slot}:%")).group_by(Outbox.status)).all())
                rows = s.scalar(select(func.count()).select_from(SlotDelivery).where(
                    SlotDelivery.day == day.isoformat(), SlotDelivery.slot == slot))
            b, even = bound_seconds(calls, args.limit), steady_seconds(calls, args.limit)
            print(f"\nslot {slot}: {report.groups} groups ({rows} delivery rows) — {report.mass} by mass message, "
                  f"{report.reminders} by reminder; plan+queue {t_plan:.1f}s, all calls settled {wall:.1f}s "
                  f"(bot CPU {cpu:.1f}s)")
            print(f"  calls: {json.dumps(calls)}")
            print(f"  rate-limit bound {b:.0f}s → wall/bound "
                  + (f"{wall / b:.2f}×" if b else "n/a (every API under one window's limit)")
                  + (f"; at the limit's even rate {even:.1f}s → {wall / even:.2f}×" if even > 1 else "")
                  + f"; client waited {c.client.pacer.waited:.1f}s for room")
            paced = {k: v for k, v in calls.items() if k not in UNPACED}   # message/send: per-member limits
            busiest = max(paced, key=paced.get, default=None)
            if busiest and wall > 0:
                print(f"  busiest API {busiest}: {calls[busiest]} calls in {wall:.1f}s by all processes = "
                      f"{calls[busiest] / wall * 60:.0f}/min against a limit of {args.limit}/min")
            print(f"  outbox outcomes {outcome}; sandbox errors so far {errors or 'none'}")
            if slot == "12:00":
                print("  (owner reminders are spread over 5-55 s after firing by design: WeCom asks to avoid :00)")
        print(f"\npeak RSS of the bot process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
        c.close()
    finally:
        for w in workers:
            w.terminate()
            w.wait(10)
        sandbox.terminate()
        sandbox.wait(10)
        drop_database()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_sandbox(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
    else:
        main()
