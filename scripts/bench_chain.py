"""Benchmark: a crowd racing for a group-buy through the real HTTP server.

    python scripts/bench_chain.py [--orders 1000] [--stock 200] [--connections 100] [--db sqlite|postgresql|both]

Starts `wecom-bot sandbox` and `wecom-bot serve` (separate processes, loopback), syncs, opens a
chain of --stock portions, then wrk (Debian package `wrk`) POSTs --orders distinct sign-ups to
/c/{token}/orders over --connections connections; GET /healthz is measured in the same run as the
reference, and the chain page is read for 2 s first (a warm server: members open the page before
the race). Reports orders accepted (must equal the stock: checked in the database too),
throughput and latency p50/p99. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_callbacks import PG_URL, free_port, run_wrk, wait_http, write_config  # noqa: E402
from bot.bootstrap import bootstrap  # noqa: E402
from bot.chains.parse import parse_open_args  # noqa: E402
from bot.config import load_settings  # noqa: E402
from bot.db.models import Store  # noqa: E402
from bot.sandbox.seed import new_corp  # noqa: E402


def open_chain(cfg: Path, stock: int) -> str:
    c = bootstrap(load_settings(cfg))
    now = c.clock.now()
    with c.sessions.begin() as s:
        store = s.get(Store, "S000")
        chain = c.chains.open(s, store, store.clerks[0],
                              parse_open_args(f"压测葡萄 39.9元 {stock}份 每人限2 截止明天18:00", now, c.settings.tz), now)
        token = chain.token
    c.close()
    return token


def bench(db: str, orders: int, stock: int, connections: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-chain-"))
    admin = schema = None
    if db == "sqlite":
        db_url = f"sqlite:///{tmp / 'bench.db'}"
    else:
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        db_url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    corp = new_corp()
    sandbox_port, bot_port = free_port(), free_port()
    cfg = tmp / "config.yaml"
    write_config(cfg, corp, db_url, sandbox_port, bot_port)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cli = [sys.executable, "-m", "bot", "--config", str(cfg)]
    procs = [subprocess.Popen(cli + ["sandbox"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        wait_http(f"http://127.0.0.1:{sandbox_port}/_sandbox/state")
        subprocess.run(cli + ["sync"], env=env, check=True, stdout=subprocess.DEVNULL)
        token = open_chain(cfg, stock)
        procs.append(subprocess.Popen(cli + ["serve", "--port", str(bot_port)], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_http(f"http://127.0.0.1:{bot_port}/healthz")
        base = f"http://127.0.0.1:{bot_port}"
        ref = run_wrk(f"{base}/healthz", 5, connections)
        # a server that has been up: pools and threads warm (members open the page before the race)
        run_wrk(f"{base}/c/{token}", 2, connections)
        res = run_wrk(base, 60, connections, ROOT / "scripts" / "wrk_orders.lua", [f"/c/{token}/orders", str(orders // 2)])
        counts = dict(re.findall(r"(created|conflict|other)=(\d+)", res["raw"]))
        span = float(re.search(r"span_ms=([\d.]+)", res["raw"]).group(1)) / 1000
        answered = sum(int(v) for v in counts.values())
        engine = create_engine(db_url)
        with engine.connect() as conn:
            sold = conn.execute(text("SELECT coalesce(sum(qty), 0), count(*) FROM chain_order WHERE status = 'active'")).one()
            left = conn.execute(text("SELECT stock_left FROM chain")).scalar()
        engine.dispose()
        print(f"[{db}] GET /healthz (reference): {ref['rps']:7.0f} req/s  p50 {ref['p50']:.1f} ms  p99 {ref['p99']:.1f} ms")
        print(f"[{db}] {orders} sign-ups for {stock} portions over {connections} connections: "
              f"{answered / span:.0f} orders/s ({answered} answered in {span:.2f}s), p50 {res['p50']:.1f} ms, "
              f"p99 {res['p99']:.1f} ms")
        print(f"[{db}]   answers: 201 accepted {counts.get('created')}, 409 sold out {counts.get('conflict')}, "
              f"other {counts.get('other')}; database: {sold[1]} orders, {sold[0]} portions sold, stock left {left}, "
              f"oversold {max(0, sold[0] - stock)}")
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        if admin is not None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orders", type=int, default=1000)
    ap.add_argument("--stock", type=int, default=200)
    ap.add_argument("--connections", type=int, default=100)
    ap.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    a = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")
    for db in (["sqlite", "postgresql"] if a.db == "both" else [a.db]):
        bench(db, a.orders, a.stock, a.connections)


if __name__ == "__main__":
    main()
