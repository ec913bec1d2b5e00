"""Benchmark: a crowd racing for a group-buy through the real HTTP server.

    python scripts/bench_chain.py [--orders 1000] [--stock 200] [--connections 100] [--db sqlite|postgresql|both]

Starts `wecom-bot sandbox` and `wecom-bot serve` (separate processes, loopback), syncs, opens a
chain of --stock portions, then wrk (Debian package `wrk`) POSTs --orders distinct sign-ups to
/c/{token}/orders over --connections connections; GET /livez (no database) is measured in the same run as the
reference, and the chain page is read for 2 s first (a warm server: members open the page before
the race). Reports orders accepted (must equal the stock: checked in the database too),
throughput and latency p50/p99. Prints figures; asserts nothing.
With --profile DIR, py-spy (`pip install py-spy`, a dev tool) samples `serve` during the sign-ups
(raw collapsed stacks, DIR/<db>-serve.txt, and DIR/<db>-serve-gil.txt for the GIL holder only);
scripts/profile_summary.py prints their top frames. A longer race (--orders 10000 --stock 2000)
gives it more samples.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text

from benchlib import ROOT, require_wrk, run_wrk, sandbox_and_bot
from bot.bootstrap import bootstrap
from bot.chains.parse import parse_open_args
from bot.config import load_settings
from bot.db.models import Store


def open_chain(cfg, stock: int) -> str:
    c = bootstrap(load_settings(cfg))
    now = c.clock.now()
    with c.sessions.begin() as s:
        store = s.get(Store, "S000")
        chain = c.chains.open(s, store, store.clerks[0],
                              parse_open_args(f"压测葡萄 39.9元 {stock}份 每人限2 截止明天18:00", now, c.settings.tz), now)
        token = chain.token
    c.close()
    return token


@contextmanager
def profiled(out_dir: Path | None, pid: int, prefix: str):
    """py-spy sampling `pid` until the block ends (all threads on CPU, and the GIL holder only), if asked."""
    if out_dir is None:
        yield
        return
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    procs = [subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", "200", "--nonblocking", "--threads",
                               "--format", "raw", "-o", str(out_dir / f"{prefix}-serve{mode}.txt"), *extra],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for mode, extra in (("", []), ("-gil", ["--gil"]))]
    try:
        yield
    finally:
        for p in procs:   # the race ends when it ends: SIGINT makes py-spy write what it has
            p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait(30)


def bench(db: str, orders: int, stock: int, connections: int, profile: Path | None = None) -> None:
    with sandbox_and_bot(db) as svc:
        svc.cli("sync")
        token = open_chain(svc.config, stock)
        ref = run_wrk(f"{svc.bot}/livez", 5, connections)
        # a server that has been up: pools and threads warm (members open the page before the race)
        run_wrk(f"{svc.bot}/c/{token}", 2, connections)
        with profiled(profile, svc.pids["serve-all"], db):
            res = run_wrk(svc.bot, 60, connections, ROOT / "scripts" / "wrk_orders.lua",
                          [f"/c/{token}/orders", str(orders // 2)])
        counts = dict(re.findall(r"(created|conflict|other)=(\d+)", res["raw"]))
        span = float(re.search(r"span_ms=([\d.]+)", res["raw"]).group(1)) / 1000
        answered = sum(int(v) for v in counts.values())
        engine = create_engine(svc.db_url)
        with engine.connect() as conn:
            sold = conn.execute(text("SELECT coalesce(sum(qty), 0), count(*) FROM chain_order "
                                     "WHERE status = 'active'")).one()
            left = conn.execute(text("SELECT stock_left FROM chain")).scalar()
        engine.dispose()
        print(f"[{db}] GET /livez (reference): {ref['rps']:7.0f} req/s  p50 {ref['p50']:.1f} ms  p99 {ref['p99']:.1f} ms")
        print(f"[{db}] {orders} sign-ups for {stock} portions over {connections} connections: "
              f"{answered / span:.0f} orders/s ({answered} answered in {span:.2f}s), p50 {res['p50']:.1f} ms, "
              f"p99 {res['p99']:.1f} ms")
        print(f"[{db}]   answers: 201 accepted {counts.get('created')}, 409 sold out {counts.get('conflict')}, "
              f"other {counts.get('other')}; database: {sold[1]} orders, {sold[0]} portions sold, stock left {left}, "
              f"oversold {max(0, sold[0] - stock)}")
        target = 0.5 if db == "sqlite" else 0.3     # issue 16: sign-ups against /livez in the same run
        print(f"[{db}] ratio: sign-ups / livez = {answered / span:.0f} / {ref['rps']:.0f} = "
              f"{answered / span / ref['rps']:.2f}x (target >= {target}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orders", type=int, default=1000)
    ap.add_argument("--stock", type=int, default=200)
    ap.add_argument("--connections", type=int, default=100)
    ap.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--profile", type=Path, metavar="DIR", help="py-spy `serve` during the sign-ups into DIR")
    a = ap.parse_args()
    require_wrk()
    if a.profile:
        a.profile.mkdir(parents=True, exist_ok=True)
    for db in (["sqlite", "postgresql"] if a.db == "both" else [a.db]):
        bench(db, a.orders, a.stock, a.connections, a.profile)


if __name__ == "__main__":
    main()
