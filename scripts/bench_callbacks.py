"""Benchmark: encrypted callbacks/s through the real HTTP server, and welcome latency under a burst.

    python scripts/bench_callbacks.py [--seconds 20] [--connections 32] [--db sqlite|postgresql|both]
                                      [--pg-roles web,worker] [--access-log off|on] [--worker-nice N]
                                      [--profile DIR]

Starts `wecom-bot sandbox` and `wecom-bot serve` as separate processes on loopback (the bot
with its workers, so the work behind the acknowledgement runs too): on SQLite one `serve` (role
all, as SQLite must run); on PostgreSQL the scale-out shape, web apart from workers (`--pg-roles`,
default `web,worker`: one `serve --role web` and one `serve --role worker`; `all` for one process),
with the access log off as deployed behind nginx (`--access-log on`: serve's own default). Then:
1. wrk (Debian package `wrk`) POSTs distinct, validly signed and encrypted callbacks for
   --seconds; the same run measures two references, so the figure is a ratio: the same callbacks
   POSTed to scripts/noop_callback.py (verify, decrypt, parse with wechatpy, answer 200: a process of
   its own with the same config and server options; the issue's target is >= 0.5x of it) and
   GET /livez of the bot (no database);
2. `wecom-bot sync`, then a burst of 200 customers adding clerks (the sandbox's driver plays them,
   16 at once); welcome latency = add event issued → send_welcome_msg accepted at the sandbox;
3. the same burst again while wrk keeps up a steady callback load at half the rate the bot
   acknowledged in 1 (fresh distinct callbacks, paced by scripts/wrk_callbacks_paced.lua): the
   issue's "welcome p99 < 2 s, 0 expired" case.
Each burst also prints its stages (p50/p99): issued → stored (callback acknowledged) → queued
(dispatched: the welcome's outbox row committed) → sent (the sandbox accepted send_welcome_msg).
With --profile DIR, py-spy (`pip install py-spy`, a dev tool) samples every bot process and the
no-op during their wrk runs (raw collapsed stacks, DIR/<db>-<process>.txt, plus `--gil` twins that
sample only the thread holding the GIL); scripts/profile_summary.py prints their top frames.
Prints figures; measures, asserts nothing.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

from benchlib import (ROOT, STORES, free_port, parse_wrk, require_wrk, run_wrk, sandbox_and_bot, wait_http,
                      wrk_command)
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
def profiled(out_dir: Path | None, seconds: int, pids: dict[str, int], prefix: str):
    """py-spy sampling `pids` for `seconds` (all threads on CPU, and the GIL holder only), if asked."""
    if out_dir is None:
        yield
        return
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    procs = []
    for name, pid in pids.items():
        for mode, extra in (("", []), ("-gil", ["--gil"])):
            procs.append(subprocess.Popen(
                [spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "100", "--nonblocking",
                 "--threads", "--format", "raw", "-o", str(out_dir / f"{prefix}-{name}{mode}.txt"), *extra],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        yield
    finally:
        for p in procs:
            try:
                p.wait(seconds + 30)
            except subprocess.TimeoutExpired:
                p.kill()


@contextmanager
def noop_callback(config: Path):
    """scripts/noop_callback.py as a process of its own, on the bot's config: its callback URL and pid."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "noop_callback.py"), "--config", str(config),
                             "--port", str(port)], env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/livez")
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def pending(engine) -> int:
    with engine.connect() as c:
        return c.execute(text("SELECT count(*) FROM event WHERE status IN ('pending', 'running')")).scalar()


def welcome_statuses(engine) -> dict[str, int]:
    with engine.connect() as c:
        return dict(c.execute(text("SELECT status, count(*) FROM welcome GROUP BY status")).all())


def burst(svc, http: httpx.Client, already: int) -> tuple[list[float], float, list[dict]]:
    """200 customers add clerks (10 a store, 20 stores at once): the latencies (ms) of their welcomes
    as the sandbox accepted them, within 60 s, how long the adds took to arrive, and the welcomes."""
    states = [s["code"] for s in STORES]
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(len(states)) as pool:
        list(pool.map(lambda s: http.post(f"{svc.sandbox}/_sandbox/members/add",
                                          json={"state": s, "count": 200 // len(states)}), states))
    took = time.perf_counter() - t0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        welcomes = http.get(f"{svc.sandbox}/_sandbox/state").json()["welcomes"][already:]
        if len(welcomes) >= 200:
            break
        time.sleep(0.2)
    return sorted(w["latency"] * 1000 for w in welcomes), took, welcomes


def _epoch(at) -> float:
    if isinstance(at, str):   # SQLite hands the column back as text
        at = datetime.fromisoformat(at)
    return (at if at.tzinfo else at.replace(tzinfo=timezone.utc)).timestamp()


def stages_line(engine, welcomes: list[dict]) -> str:
    """Where a welcome's time went, p50/p99 of each stage: the add issued at the sandbox → stored by the
    bot (the callback's HTTP, acknowledged) → welcome queued (dispatch: the outbox row committed) → the
    sandbox accepted send_welcome_msg (the outbox's claim and call)."""
    with engine.connect() as c:
        rows = {code: (_epoch(event_at), _epoch(queued)) for code, event_at, queued in c.execute(text(
            "SELECT w.welcome_code, w.event_at, o.created_at FROM welcome w JOIN outbox o "
            "ON o.key = 'welcome:' || w.welcome_code WHERE w.welcome_code IS NOT NULL"))}
    parts: dict[str, list[float]] = {"stored": [], "queued": [], "sent": []}
    for w in welcomes:
        if w["welcome_code"] not in rows:
            continue
        stored, queued = rows[w["welcome_code"]]
        parts["stored"].append(stored - w["issued_at"])
        parts["queued"].append(queued - stored)
        parts["sent"].append(w["sent_at"] - queued)
    return "; ".join(f"{k} +{percentile(sorted(v), .5) * 1000:.0f}/{percentile(sorted(v), .99) * 1000:.0f} ms"
                     for k, v in parts.items())


def percentile(ordered: list[float], p: float) -> float:
    """The p-th of an ascending list, as the latency lines read it (p99 of 200: the 198th)."""
    return ordered[max(0, int(len(ordered) * p) - 1)] if ordered else float("nan")


def latency_line(lat: list[float]) -> str:
    if not lat:
        return "no welcomes"
    within = sum(1 for v in lat if v < 20000)
    return (f"{len(lat)} welcomes, latency p50 {lat[len(lat) // 2]:.0f} ms  p99 {percentile(lat, .99):.0f} ms  "
            f"max {lat[-1]:.0f} ms; inside 20 s: {within}/200")


def bench(db: str, seconds: int, connections: int, roles: tuple[str, ...], profile: Path | None,
          access_log: bool, worker_nice: int = 0) -> None:
    with sandbox_and_bot(db, roles, {"access_log": access_log}) as svc:
        bots = {k: v for k, v in svc.pids.items() if k.startswith("serve")}
        print(f"[{db}] access_log: {'on' if access_log else 'off (as deployed behind nginx)'}")
        if worker_nice:   # as the systemd unit's Nice= (deploy/systemd/wecom-bot-worker@.service)
            for name, pid in bots.items():
                if name.startswith(("serve-worker", "serve-scheduler")):
                    os.setpriority(os.PRIO_PROCESS, pid, worker_nice)
        print(f"[{db}] processes: {', '.join(f'{k} (pid {v})' for k, v in svc.pids.items())}")
        requests_file = svc.tmp / "requests.txt"
        n = max(20000, seconds * 4000)   # distinct for the whole run: a redelivery is cheaper to answer
        t0 = time.perf_counter()
        seal_requests(svc.corp, requests_file, n)
        print(f"[{db}] sealed {n} distinct callbacks in {time.perf_counter() - t0:.1f}s")
        lua = [ROOT / "scripts" / "wrk_callbacks.lua", [str(requests_file), "2"]]
        ref = run_wrk(f"{svc.bot}/livez", seconds, connections)
        with noop_callback(svc.config) as (noop_url, noop_pid):   # before the bot's run: its backlog drain would compete
            with profiled(profile, seconds, {"noop": noop_pid}, db):
                noop = run_wrk(noop_url, seconds, connections, *lua)
        with profiled(profile, seconds, bots, db):
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
        svc.cli("sync")
        with httpx.Client(timeout=120) as http:
            lat, took, sent = burst(svc, http, 0)
            print(f"[{db}] burst of 200 adds in {took:.1f}s: {latency_line(lat)}")
            print(f"[{db}]   stages, p50/p99: {stages_line(engine, sent)}")
            done = len(lat)
            # The same burst inside a steady load at half the acknowledged rate (fresh timestamps).
            rate = cb["rps"] / 2
            load_seconds, lead = 40, 5
            paced_connections = 64   # a closed loop: each connection sends every wait + latency ms
            paced = ROOT / "scripts" / "wrk_callbacks_paced.lua"
            wait_ms = max(1, int(paced_connections * 1000 / rate))
            # Calibrate: a few seconds at that wait show the latency at this rate; the wait leaves room for it.
            trial_file = svc.tmp / "trial.txt"
            seal_requests(svc.corp, trial_file, int(rate * 5) + 100)
            trial = run_wrk(svc.bot, 3, paced_connections, paced, [str(trial_file), "2", str(wait_ms)])
            cycle_ms = paced_connections * 1000 / max(trial["rps"], 1)
            wait_ms = max(1, int(wait_ms - (cycle_ms - wait_ms)))
            load_file = svc.tmp / "load.txt"
            seal_requests(svc.corp, load_file, int(rate * load_seconds * 1.3) + 100)
            before = welcome_statuses(engine)
            load = subprocess.Popen(wrk_command(svc.bot, load_seconds, paced_connections, paced,
                                                [str(load_file), "2", str(wait_ms)]),
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            time.sleep(lead)
            lat, took, sent = burst(svc, http, done)
            out, _ = load.communicate(timeout=load_seconds + 60)
        sustained = parse_wrk(out)
        after = welcome_statuses(engine)
        expired = after.get("expired", 0) - before.get("expired", 0)
        print(f"[{db}] steady load beside the burst: {sustained['rps']:.0f} req/s acknowledged "
              f"(asked {rate:.0f}/s = half of {cb['rps']:.0f})  p99 {sustained['p99']:.1f} ms  "
              f"non-2xx {sustained['non2xx']}")
        print(f"[{db}] burst of 200 adds under that load in {took:.1f}s: {latency_line(lat)}; "
              f"expired (bot's welcome rows) {expired}")
        print(f"[{db}]   stages, p50/p99: {stages_line(engine, sent)}")
        engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--pg-roles", default="web,worker",
                    help="the `serve` processes on PostgreSQL, by --role (default web,worker; `all`: one process)")
    ap.add_argument("--profile", type=Path, metavar="DIR", help="py-spy the processes under load into DIR")
    ap.add_argument("--access-log", choices=["on", "off"], default="off",
                    help="the bot's access_log (default off, as deployed behind nginx, which logs each request: "
                         "deploy/wecom-bot.env.example; like the no-op, which logs none). `on` is serve's own "
                         "default: its line per request costs about a fifth of the rate")
    ap.add_argument("--worker-nice", type=int, default=0, metavar="N",
                    help="run the worker and scheduler processes at this nice value (PostgreSQL's split roles)")
    a = ap.parse_args()
    require_wrk()
    if a.profile:
        a.profile.mkdir(parents=True, exist_ok=True)
    for db in (["sqlite", "postgresql"] if a.db == "both" else [a.db]):
        roles = ("all",) if db == "sqlite" else tuple(r.strip() for r in a.pg_roles.split(",") if r.strip())
        bench(db, a.seconds, a.connections, roles, a.profile, a.access_log == "on",
              a.worker_nice)


if __name__ == "__main__":
    main()
