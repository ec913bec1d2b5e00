"""Benchmark: encrypted callbacks/s through the real HTTP server, and welcome latency under a burst.

    python scripts/bench_callbacks.py [--seconds 20] [--connections 32] [--db sqlite|postgresql|both]

Starts `wecom-bot sandbox` and `wecom-bot serve` as separate processes on loopback (the bot
with its workers, so the work behind the acknowledgement runs too), then:
1. wrk (Debian package `wrk`) POSTs distinct, validly signed and encrypted callbacks for
   --seconds; the same run measures two references, so the figure is a ratio: the same callbacks
   POSTed to scripts/noop_callback.py (verify, decrypt, parse with wechatpy, answer 200: a process of
   its own with the same config and server options; the issue's target is >= 0.5x of it) and
   GET /livez of the bot (no database);
2. `wecom-bot sync`, then a burst of 200 customers adding clerks (the sandbox's driver plays them,
   16 at once); welcome latency = add event issued → send_welcome_msg accepted at the sandbox.
Prints figures; measures, asserts nothing.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

from benchlib import ROOT, STORES, free_port, require_wrk, run_wrk, sandbox_and_bot, wait_http
from bot.clock import SystemClock
from bot.sandbox.backend import Corp, WeComBackend
from bot.sandbox.driver import Driver, event_xml


def seal_requests(corp: Corp, path: Path, n: int) -> None:
    """n distinct callbacks, as WeCom would POST them: group-membership and contact events."""
    backend = WeComBackend(corp, SystemClock())
    driver = Driver(backend, "http://unused")
    now = int(time.time())
    with path.open("w") as f:
        for i in range(n):
            if i % 2:
                fields = {"Event": "change_external_chat", "ChangeType": "update", "ChatId": f"wr{i % 997:06d}",
                          "UpdateDetail": "add_member", "JoinScene": "3", "MemChangeCnt": "1",
                          "MemChangeList": [f"wm{uuid.uuid4().hex[:16]}"]}
            else:  # a contact added through an unknown QR: stored, handled, recorded, no WeCom call
                fields = {"Event": "change_external_contact", "ChangeType": "add_external_contact",
                          "UserID": "clerk1", "ExternalUserID": f"wm{uuid.uuid4().hex[:16]}", "State": "BENCH"}
            params, body = driver.seal(event_xml(corp.corp_id, now, fields), timestamp=now)
            query = "&".join(f"{k}={v}" for k, v in params.items())
            f.write(f"/wecom/callback?{query}\t{body.decode()}\n")


@contextmanager
def noop_callback(config: Path):
    """scripts/noop_callback.py as a process of its own, on the bot's config: its callback URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "noop_callback.py"), "--config", str(config),
                             "--port", str(port)], env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/livez")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def pending(engine) -> int:
    with engine.connect() as c:
        return c.execute(text("SELECT count(*) FROM event WHERE status IN ('pending', 'running')")).scalar()


def bench(db: str, seconds: int, connections: int) -> None:
    with sandbox_and_bot(db) as svc:
        requests_file = svc.tmp / "requests.txt"
        n = max(20000, seconds * 2500)
        t0 = time.perf_counter()
        seal_requests(svc.corp, requests_file, n)
        print(f"[{db}] sealed {n} distinct callbacks in {time.perf_counter() - t0:.1f}s")
        lua = [ROOT / "scripts" / "wrk_callbacks.lua", [str(requests_file), "2"]]
        ref = run_wrk(f"{svc.bot}/livez", seconds, connections)
        with noop_callback(svc.config) as noop_url:   # before the bot's run: its backlog drain would compete
            noop = run_wrk(noop_url, seconds, connections, *lua)
        cb = run_wrk(svc.bot, seconds, connections, *lua)
        print(f"[{db}] GET /livez (reference):      {ref['rps']:8.0f} req/s  p50 {ref['p50']:.1f} ms  "
              f"p99 {ref['p99']:.1f} ms")
        print(f"[{db}] noop_callback (reference):   {noop['rps']:8.0f} req/s  p50 {noop['p50']:.1f} ms  "
              f"p99 {noop['p99']:.1f} ms  non-2xx {noop['non2xx']}")
        print(f"[{db}] POST /wecom/callback (bot):  {cb['rps']:8.0f} req/s  p50 {cb['p50']:.1f} ms  "
              f"p99 {cb['p99']:.1f} ms  non-2xx {cb['non2xx']}  "
              f"({'all distinct' if not cb['wrapped'] else 'some redelivered'})")
        print(f"[{db}] ratio: bot / noop_callback = {cb['rps']:.0f} / {noop['rps']:.0f} = {cb['rps'] / noop['rps']:.2f}x "
              f"(target >= 0.5x); bot / livez = {cb['rps']:.0f} / {ref['rps']:.0f} = {cb['rps'] / ref['rps']:.2f}x; "
              f"noop_callback / livez = {noop['rps'] / ref['rps']:.2f}x")
        # The load left a backlog of stored events; the workers drain it behind the acknowledgements.
        engine = create_engine(svc.db_url)
        drained_from = time.perf_counter()
        backlog = pending(engine)
        while (left := pending(engine)) and time.perf_counter() - drained_from < 600:
            time.sleep(0.5)
        took = time.perf_counter() - drained_from
        print(f"[{db}] backlog of {backlog} events handled in {took:.1f}s after the load "
              f"({(backlog - left) / took if took else 0:.0f} events/s){'' if not left else f', {left} left'}")
        engine.dispose()
        svc.cli("sync")
        states = [s["code"] for s in STORES]
        t0 = time.perf_counter()
        per_store = 200 // len(states)
        with httpx.Client(timeout=120) as http:
            with cf.ThreadPoolExecutor(len(states)) as pool:
                list(pool.map(lambda s: http.post(f"{svc.sandbox}/_sandbox/members/add",
                                                  json={"state": s, "count": per_store}), states))
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                welcomes = http.get(f"{svc.sandbox}/_sandbox/state").json()["welcomes"]
                if len(welcomes) >= 200:
                    break
                time.sleep(0.2)
        lat = sorted(w["latency"] * 1000 for w in welcomes)
        within = sum(1 for v in lat if v < 20000)
        print(f"[{db}] burst of 200 adds in {time.perf_counter() - t0:.1f}s: {len(lat)} welcomes, "
              f"latency p50 {lat[len(lat) // 2]:.0f} ms  p99 {lat[int(len(lat) * .99) - 1]:.0f} ms  "
              f"max {lat[-1]:.0f} ms; inside 20 s: {within}/200")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    a = ap.parse_args()
    require_wrk()
    for db in (["sqlite", "postgresql"] if a.db == "both" else [a.db]):
        bench(db, a.seconds, a.connections)


if __name__ == "__main__":
    main()
