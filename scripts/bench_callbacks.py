"""Benchmark: encrypted callbacks/s through the real HTTP server, and welcome latency under a burst.

    python scripts/bench_callbacks.py [--seconds 20] [--connections 32] [--db sqlite|postgresql|both]

Starts `wecom-bot sandbox` and `wecom-bot serve` as separate processes on loopback (the bot
with its workers, so the work behind the acknowledgement runs too), then:
1. wrk (Debian package `wrk`) POSTs distinct, validly signed and encrypted callbacks for
   --seconds; the same run measures GET /healthz as a reference, so the figure is a ratio too;
2. `wecom-bot sync`, then a burst of 200 customers adding clerks (the sandbox's driver plays them,
   16 at once); welcome latency = add event issued → send_welcome_msg accepted at the sandbox.
Prints figures; measures, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.clock import SystemClock  # noqa: E402
from bot.sandbox.backend import Corp, WeComBackend  # noqa: E402
from bot.sandbox.driver import Driver, event_xml  # noqa: E402
from bot.sandbox.seed import new_corp  # noqa: E402

PG_URL = os.environ.get("WECOM_BOT_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
STORES = [{"code": f"S{i:03d}", "name": f"门店{i}", "clerks": [f"clerk{i}"]} for i in range(20)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def write_config(path: Path, corp: Corp, db_url: str, sandbox_port: int, bot_port: int) -> None:
    path.write_text(json.dumps({  # JSON is YAML
        "database_url": db_url, "public_base_url": f"http://127.0.0.1:{bot_port}",
        "admin_token": secrets.token_hex(8), "calendar_dir": str(ROOT / "content_calendar"),
        "wecom": {"corp_id": corp.corp_id, "agent_id": corp.agent_id, "secret": corp.secret, "token": corp.token,
                  "encoding_aes_key": corp.encoding_aes_key,
                  "api_base_url": f"http://127.0.0.1:{sandbox_port}/cgi-bin/"},
        "stores": STORES}, ensure_ascii=False), encoding="utf-8")


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


def pending(engine) -> int:
    with engine.connect() as c:
        return c.execute(text("SELECT count(*) FROM event WHERE status IN ('pending', 'running')")).scalar()


def run_wrk(url: str, seconds: int, connections: int, script: Path | None = None, args: list[str] = ()) -> dict:
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    if script:
        cmd += ["-s", str(script)]
    out = subprocess.run(cmd + [url, *([ "--", *args] if args else [])], capture_output=True, text=True,
                         check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def pct(p):
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v

    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    wrapped = re.search(r"wrapped=(\d+)", out)
    return {"rps": rps, "p50": pct(50), "p99": pct(99), "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "wrapped": int(wrapped.group(1)) if wrapped else 0, "raw": out}


def bench(db: str, seconds: int, connections: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-callbacks-"))
    admin = None
    if db == "sqlite":
        db_url = f"sqlite:///{tmp / 'bench.db'}"
    else:
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f'CREATE SCHEMA "{schema}"'))
        db_url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    corp = new_corp()
    sandbox_port, bot_port = free_port(), free_port()
    cfg = tmp / "config.yaml"
    write_config(cfg, corp, db_url, sandbox_port, bot_port)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cli = [sys.executable, "-m", "bot", "--config", str(cfg)]
    procs = [subprocess.Popen(cli + ["sandbox"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
             subprocess.Popen(cli + ["serve", "--port", str(bot_port)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)]
    try:
        wait_http(f"http://127.0.0.1:{sandbox_port}/_sandbox/state")
        wait_http(f"http://127.0.0.1:{bot_port}/healthz")
        requests_file = tmp / "requests.txt"
        n = max(20000, seconds * 2500)
        t0 = time.perf_counter()
        seal_requests(corp, requests_file, n)
        print(f"[{db}] sealed {n} distinct callbacks in {time.perf_counter() - t0:.1f}s")
        ref = run_wrk(f"http://127.0.0.1:{bot_port}/healthz", seconds, connections)
        cb = run_wrk(f"http://127.0.0.1:{bot_port}", seconds, connections, ROOT / "scripts" / "wrk_callbacks.lua",
                     [str(requests_file), "2"])
        print(f"[{db}] GET /healthz (reference): {ref['rps']:8.0f} req/s  p50 {ref['p50']:.1f} ms  p99 {ref['p99']:.1f} ms")
        print(f"[{db}] POST /wecom/callback:     {cb['rps']:8.0f} req/s  p50 {cb['p50']:.1f} ms  p99 {cb['p99']:.1f} ms"
              f"  non-2xx {cb['non2xx']}  (ratio to reference {cb['rps'] / ref['rps']:.2f}; "
              f"{'all distinct' if not cb['wrapped'] else 'some redelivered'})")
        # The load left a backlog of stored events; the workers drain it behind the acknowledgements.
        engine = create_engine(db_url)
        drained_from = time.perf_counter()
        backlog = pending(engine)
        while (left := pending(engine)) and time.perf_counter() - drained_from < 600:
            time.sleep(0.5)
        took = time.perf_counter() - drained_from
        print(f"[{db}] backlog of {backlog} events handled in {took:.1f}s after the load "
              f"({(backlog - left) / took if took else 0:.0f} events/s){'' if not left else f', {left} left'}")
        engine.dispose()
        subprocess.run(cli + ["sync"], env=env, check=True, stdout=subprocess.DEVNULL)
        states = [s["code"] for s in STORES]
        sandbox = f"http://127.0.0.1:{sandbox_port}"
        t0 = time.perf_counter()
        per_store = 200 // len(states)
        with httpx.Client(timeout=120) as http:
            import concurrent.futures as cf
            with cf.ThreadPoolExecutor(len(states)) as pool:
                list(pool.map(lambda s: http.post(f"{sandbox}/_sandbox/members/add",
                                                  json={"state": s, "count": per_store}), states))
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                welcomes = http.get(f"{sandbox}/_sandbox/state").json()["welcomes"]
                if len(welcomes) >= 200:
                    break
                time.sleep(0.2)
        lat = sorted(w["latency"] * 1000 for w in welcomes)
        within = sum(1 for v in lat if v < 20000)
        print(f"[{db}] burst of 200 adds in {time.perf_counter() - t0:.1f}s: {len(lat)} welcomes, "
              f"latency p50 {lat[len(lat) // 2]:.0f} ms  p99 {lat[int(len(lat) * .99) - 1]:.0f} ms  "
              f"max {lat[-1]:.0f} ms; inside 20 s: {within}/200")
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        if admin is not None:
            with admin.connect() as c:
                c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    a = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")
    for db in (["sqlite", "postgresql"] if a.db == "both" else [a.db]):
        bench(db, a.seconds, a.connections)


if __name__ == "__main__":
    main()
