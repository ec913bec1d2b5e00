"""`wecom-bot sync` for a whole chain: 4,800 stores, 25,000 groups, 4,800 clerks, against the sandbox
with WeCom's per-API limit (10,000 calls a minute, 45009 past it).

The sandbox runs as its own process (one clerk per store, about 5 groups each, no QR codes yet);
the sync runs here, in-process, as `wecom-bot sync --concurrency N` runs it, on a fresh database.
The first run creates every store's contact way and join way and reads every group (the member
baselines); `--runs 2` adds the second run, which must change nothing at WeCom. Reported per run:
wall time, calls per API, 45009 answers, the rate-limit bound (the k-th call of an API cannot start
before floor((k-1)/limit) minutes) and the bot's peak memory (RSS).

    .venv/bin/python scripts/bench_sync.py [--db sqlite|postgresql] [--stores 4800] [--groups 25000]
        [--concurrency 8] [--limit 10000] [--latency-ms 0] [--runs 1|2] [--members 40-180]
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
import tempfile
import time
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import httpx  # noqa: E402

from benchlib import free_port, fresh_database, wait_http  # noqa: E402
from bot.sandbox.seed import new_corp  # noqa: E402


def child_sandbox(port: int, corp_json: str, limit: int, latency_ms: float, stores: int, groups: int,
                  members: str) -> None:
    """The sandbox process: clerk c<i> for store i, group g owned by the clerk of store g % stores."""
    import asyncio

    import uvicorn

    from bot.clock import SystemClock
    from bot.sandbox.backend import Corp, WeComBackend
    from bot.sandbox.routes import create_sandbox_app
    from bot.sandbox.rules import Rules

    lo, hi = map(int, members.split("-"))
    backend = WeComBackend(Corp(**json.loads(corp_json)), SystemClock(), Rules(per_api_per_minute=limit),
                           public_url=f"http://127.0.0.1:{port}")
    rng = random.Random(4800)
    for i in range(stores):
        backend.add_clerk(f"c{i:04d}")
    for g in range(groups):
        i = g % stores
        backend.create_group(f"c{i:04d}", f"门店{i}福利群{g // stores + 1}", members=rng.randint(lo, hi))
    app = create_sandbox_app(backend)
    delay = latency_ms / 1000.0

    async def with_latency(scope, receive, send):
        # WeCom's round trip, on the API only (the control plane and QR images answer at once)
        if delay and scope["type"] == "http" and scope["path"].startswith("/cgi-bin/"):
            await asyncio.sleep(delay)
        await app(scope, receive, send)

    uvicorn.run(with_latency, host="127.0.0.1", port=port, log_level="warning", backlog=2048)


def bound_seconds(calls: dict[str, int], limit: int) -> float:
    return max((math.floor((n - 1) / limit) * 60 for ep, n in calls.items() if n and ep != "gettoken"), default=0.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--stores", type=int, default=4800, help="stores (one clerk each; scale down for a quick run)")
    ap.add_argument("--groups", type=int, default=None, help="groups (default 25,000 scaled with --stores)")
    ap.add_argument("--members", default="40-180", help="members per group, LO-HI (sync stores each member list)")
    ap.add_argument("--concurrency", type=int, default=8, help="stores synced at once (`sync --concurrency`)")
    ap.add_argument("--limit", type=int, default=10_000, help="calls per minute per API (WeCom: 10,000)")
    ap.add_argument("--latency-ms", type=float, default=0.0, help="added to every API answer of the sandbox")
    ap.add_argument("--runs", type=int, choices=[1, 2], default=1, help="2: also the second, no-op run")
    args = ap.parse_args()
    groups = args.groups or round(25_000 * args.stores / 4800)

    from bot.bootstrap import bootstrap
    from bot.clock import SystemClock
    from bot.config import Settings

    corp = new_corp()
    port = free_port()
    env = {**os.environ, "PYTHONPATH": ROOT}
    t_start = time.perf_counter()
    sandbox = subprocess.Popen([sys.executable, __file__, "--child", str(port), json.dumps(corp.__dict__),
                                str(args.limit), str(args.latency_ms), str(args.stores), str(groups), args.members],
                               env=env)
    tmp = tempfile.mkdtemp(prefix="bench-sync-")
    db_url, drop_database = fresh_database(args.db, Path(tmp))
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/_sandbox/state", timeout=300)
        stores = [{"code": f"S{i:04d}", "name": f"门店{i}", "clerks": [f"c{i:04d}"]} for i in range(args.stores)]
        settings = Settings.model_validate({
            "database_url": db_url, "public_base_url": "http://127.0.0.1:9", "admin_token": "bench-admin-token",
            "calendar_dir": os.path.join(ROOT, "content_calendar"),
            "wecom": {"corp_id": corp.corp_id, "agent_id": corp.agent_id, "secret": corp.secret, "token": corp.token,
                      "encoding_aes_key": corp.encoding_aes_key, "api_base_url": f"{base}/cgi-bin/",
                      "calls_per_minute": args.limit},
            "stores": stores})
        c = bootstrap(settings, clock=SystemClock(settings.tz), migrate=True)
        print(f"{args.db}: {args.stores} stores, {groups} groups ({args.members} members each), {args.stores} clerks; "
              f"limit {args.limit}/min per API; API latency {args.latency_ms:g} ms; concurrency {args.concurrency}; "
              f"set up in {time.perf_counter() - t_start:.0f}s")
        before = httpx.get(f"{base}/_sandbox/state", timeout=120).json()
        for run in range(1, args.runs + 1):
            t0, cpu0 = time.perf_counter(), time.process_time()
            report = c.provisioner().sync(settings.stores, concurrency=args.concurrency)
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            after = httpx.get(f"{base}/_sandbox/state", timeout=120).json()
            calls = {k: v - before["calls"].get(k, 0) for k, v in sorted(after["calls"].items())
                     if v - before["calls"].get(k, 0)}
            limited = {k: v - before["errors"].get(k, 0) for k, v in after["errors"].items()
                       if k.endswith(":45009") and v - before["errors"].get(k, 0)}
            writes = after["writes"] - before["writes"]
            before = after
            b = bound_seconds(calls, args.limit)
            print(f"\nrun {run}: {report.summary()}")
            print(f"  wall {wall:.1f}s (bot CPU {cpu:.1f}s); {sum(calls.values())} calls, {writes} writes at WeCom")
            print(f"  calls: {json.dumps(calls)}")
            print(f"  45009 answers: {sum(limited.values())} {json.dumps(limited) if limited else ''}; "
                  f"client waited {c.client.pacer.waited:.1f}s for room; rate-limit bound {b:.0f}s"
                  + (f" → wall/bound {wall / b:.2f}×" if b else ""))
            if report.failed:
                print(f"  failed: {[(r.code, r.error) for r in report.failed[:5]]}")
        print(f"\npeak RSS of the bot process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
        c.close()
    finally:
        sandbox.terminate()
        sandbox.wait(10)
        drop_database()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        port, corp_json, limit, latency, n_stores, n_groups, members = sys.argv[2:9]
        child_sandbox(int(port), corp_json, int(limit), float(latency), int(n_stores), int(n_groups), members)
    else:
        main()
