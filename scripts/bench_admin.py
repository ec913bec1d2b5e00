"""`GET /admin` for a whole chain: 4,800 stores with a month of history, against `GET /livez` in the
same run.

The history is written straight into a fresh database (PostgreSQL COPY, SQLite executemany), as the bot
would have recorded it: per store-day Poisson adds around the store's own rate (lognormal around
`--adds`), each add's customer opening the group-QR page (`viewed`, 70%) and joining through the group QR
with the store's conversion (a Beta around 55%) after a lognormal delay (median 3 minutes, a few the next
day), some leaving the group (4%) or deleting the clerk (1.5%); five groups per store with the day's four
slots (mass or reminder, with their outcomes) every day; QR findings (2% of stores open, older ones
resolved); a group-buy chain per store a week. Then `wecom-bot serve --role web` (a process of its own)
answers `/admin` with the Bearer `admin_token`: today, 7 and 30 days, the first page and a sorted, filtered
page, N requests each after a warm-up, one at a time; `/livez` (no database) is the reference.

    .venv/bin/python scripts/bench_admin.py [--db postgresql|sqlite|both] [--stores 4800] [--days 30]
        [--adds 12] [--requests 30]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import httpx  # noqa: E402
from sqlalchemy import create_engine, insert, text  # noqa: E402

from benchlib import free_port, fresh_database, wait_http  # noqa: E402
from bot.db.models import Chain, FunnelFact, QrFinding, SlotDelivery, Store  # noqa: E402

TZ = ZoneInfo("Asia/Shanghai")
REGIONS = ("SZ", "GZ", "SH", "BJ")          # SZ* is the shipped calendar's 深圳 region
SLOTS = ("10:00", "12:00", "16:00", "20:00")
HOUR_WEIGHTS = [0, 0, 0, 0, 0, 0, 1, 2, 4, 6, 8, 9, 10, 9, 7, 7, 8, 9, 10, 10, 8, 5, 2, 1]   # a store's day


def poisson(rng: random.Random, lam: float) -> int:
    if lam > 30:                                    # normal approximation: Knuth's loop is slow there
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    k, p, limit = 0, 1.0, math.exp(-lam)
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


class History:
    """Rows as tuples, in the tables' column order, written in batches."""

    def __init__(self, args, now: datetime):
        self.args, self.now = args, now
        self.rng = random.Random(4800)
        self.today = now.astimezone(TZ).date()
        self.codes = [f"{REGIONS[i % len(REGIONS)]}{i:04d}" for i in range(args.stores)]
        self.counts: dict[str, int] = {}

    def stores(self) -> list[dict]:
        return [{"code": c, "name": f"{c[:2]}第{int(c[2:])}号店", "clerks": [f"clerk{c}"], "join_way_chat_ids": []}
                for c in self.codes]

    def facts(self):
        """(key, kind, store_code, chat_id, userid, external_userid, at, join_delay_seconds), by store."""
        rng, n = self.rng, 0
        hours = [h for h, w in enumerate(HOUR_WEIGHTS) for _ in range(w)]
        for code in self.codes:
            rate = self.args.adds * math.exp(rng.gauss(0, 0.5) - 0.125)      # lognormal, mean --adds
            conv = rng.betavariate(5.5, 4.5)
            clerk = f"clerk{code}"
            for back in range(self.args.days - 1, -1, -1):
                day = self.today - timedelta(days=back)
                start = datetime(day.year, day.month, day.day, tzinfo=TZ)
                for _ in range(poisson(rng, rate)):
                    at = start + timedelta(hours=rng.choice(hours), seconds=rng.randrange(3600))
                    if at > self.now:
                        continue
                    n += 1
                    ext = f"wm{code}{n:08d}"
                    chat = f"wr{code}{rng.randrange(5)}"
                    yield (f"add:b{n}", "add", code, None, clerk, ext, at, None)
                    if rng.random() < 0.7:
                        seen = at + timedelta(seconds=rng.randrange(5, 120))
                        if seen <= self.now:
                            yield (f"viewed:b{n}", "viewed", code, None, None, ext, seen, None)
                    if rng.random() < conv:
                        delay = int(min(rng.lognormvariate(math.log(180), 1.4), 40 * 3600))
                        joined = at + timedelta(seconds=delay)
                        if joined <= self.now:
                            yield (f"join:b{n}", "join", code, chat, None, ext, joined, delay)
                            if rng.random() < 0.04:
                                left = joined + timedelta(hours=rng.randrange(1, 200))
                                if left <= self.now:
                                    yield (f"leave:b{n}", "leave", code, chat, None, ext, left, None)
                    if rng.random() < 0.015:
                        gone = at + timedelta(hours=rng.randrange(1, 200))
                        if gone <= self.now:
                            yield (f"clerk_deleted:b{n}", "clerk_deleted", code, None, clerk, ext, gone, None)
                    if rng.random() < 0.004:
                        yield (f"report:b{n}", "report:error", code, None, None, ext, at + timedelta(minutes=2), None)

    def deliveries(self):
        """(day, slot, chat_id, store_code, owner, mode, kind, status, reason, msgid, planned_at, fired_at, sent_at,
        opened_at, tapped_at): five groups a store, four slots a day."""
        rng = self.rng
        for back in range(self.args.days - 1, -1, -1):
            day = self.today - timedelta(days=back)
            start = datetime(day.year, day.month, day.day, tzinfo=TZ)
            for code in self.codes:
                mass_slot = rng.choice(SLOTS)
                for g in range(5):
                    chat = f"wr{code}{g}"
                    for slot in SLOTS:
                        at = start + timedelta(hours=int(slot[:2]))
                        planned = start + timedelta(hours=6)
                        if at > self.now:
                            row = ("planned", None, None, None, None, None)
                        elif slot == mass_slot:
                            r = rng.random()
                            status = "sent" if r < 0.8 else "awaiting" if back == 0 and r < 0.95 else "failed"
                            row = (status, "not confirmed" if status == "failed" else None, f"msg{code}{g}{slot}",
                                   at, at + timedelta(minutes=30) if status == "sent" else None, None)
                        else:
                            tapped = rng.random() < 0.35
                            row = ("sent" if tapped else "reminded", None, None, at,
                                   at + timedelta(minutes=20) if tapped else None,
                                   at + timedelta(minutes=18) if tapped else None)
                        status, reason, msgid, fired, sent, tap = row
                        yield (day.isoformat(), slot, chat, code, f"clerk{code}",
                               "mass" if slot == mass_slot else "reminder", "benefit", status, reason, msgid, planned,
                               fired, sent, tap, tap)

    def findings(self):
        rng = self.rng
        for code in self.codes:
            for k in range(rng.choice((0, 0, 1, 2))):
                opened = self.now - timedelta(hours=rng.randrange(24, 24 * self.args.days))
                yield dict(store_code=code, kind=rng.choice(("stalled", "full", "gone")), open_key=None,
                           since=opened - timedelta(minutes=30), evidence={"adds": 8}, opened_at=opened,
                           resolved_at=opened + timedelta(hours=2), repaired=None)
            if rng.random() < 0.02:
                opened = self.now - timedelta(minutes=rng.randrange(10, 3000))
                yield dict(store_code=code, kind="stalled", open_key=f"{code}:stalled", since=opened,
                           evidence={"adds": 9}, opened_at=opened, resolved_at=None, repaired=None)

    def chains(self):
        rng = self.rng
        for code in self.codes:
            for week in range(math.ceil(self.args.days / 7)):
                created = self.now - timedelta(days=week * 7 + rng.random() * 6)
                deadline = created + timedelta(days=3)
                total = rng.choice((50, 100, 200))
                left = rng.randrange(0, total)
                closed = deadline <= self.now
                yield dict(token=secrets.token_hex(8), store_code=code, clerk=f"clerk{code}", title="阳光玫瑰葡萄",
                           price_cents=3990, stock_total=total, stock_left=left, per_person_limit=2,
                           opens_at=created, deadline=deadline, status="closed" if closed else "open",
                           closed_at=deadline if closed else None, closed_reason="deadline" if closed else None,
                           created_at=created)


FACT_COLS = ("key", "kind", "store_code", "chat_id", "userid", "external_userid", "at", "join_delay_seconds")
SLOT_COLS = ("day", "slot", "chat_id", "store_code", "owner", "mode", "kind", "status", "reason", "msgid",
             "planned_at", "fired_at", "sent_at", "opened_at", "tapped_at")


def sqlite_at(v):
    """SQLAlchemy's SQLite storage of a UTCDateTime: naive UTC text with microseconds."""
    if isinstance(v, datetime):
        return v.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
    return v


def bulk(engine, table: str, cols: tuple[str, ...], rows, db: str) -> int:
    n = 0
    if db == "postgresql":
        raw = engine.raw_connection()
        try:
            with raw.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as cp:
                for row in rows:
                    cp.write_row(row)
                    n += 1
            raw.commit()
        finally:
            raw.close()
        return n
    raw = engine.raw_connection()
    try:
        sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        batch = []
        for row in rows:
            batch.append(tuple(sqlite_at(v) for v in row))
            if len(batch) == 50_000:
                raw.cursor().executemany(sql, batch)
                n += len(batch)
                batch = []
        raw.cursor().executemany(sql, batch)
        n += len(batch)
        raw.commit()
    finally:
        raw.close()
    return n


def generate(db: str, db_url: str, args, now: datetime) -> str:
    t0 = time.perf_counter()
    hist = History(args, now)
    engine = create_engine(db_url)
    with engine.begin() as c:
        c.execute(insert(Store.__table__), hist.stores())
        c.execute(insert(QrFinding.__table__), list(hist.findings()))
        c.execute(insert(Chain.__table__), list(hist.chains()))
    facts = bulk(engine, FunnelFact.__tablename__, FACT_COLS, hist.facts(), db)
    slots = bulk(engine, SlotDelivery.__tablename__, SLOT_COLS, hist.deliveries(), db)
    with engine.begin() as c:
        c.execute(text("ANALYZE"))
        kinds = dict(c.execute(text("SELECT kind, count(*) FROM funnel_fact GROUP BY kind")).all())
        findings = c.execute(text("SELECT count(*), count(open_key) FROM qr_finding")).one()
        chains = c.execute(text("SELECT count(*) FROM chain")).scalar()
    engine.dispose()
    return (f"{args.stores} stores, {args.days} days: {facts:,} funnel facts ({', '.join(f'{k} {v:,}' for k, v in sorted(kinds.items()))}; "
            f"{facts / args.stores / args.days:.1f} a store-day), {slots:,} slot deliveries (5 groups × 4 slots a "
            f"store-day), {findings[0]:,} QR findings ({findings[1]} open), {chains:,} chains; written in "
            f"{time.perf_counter() - t0:.0f}s")


def measure(http: httpx.Client, path: str, n: int, warm: int = 2) -> dict:
    for _ in range(warm):
        assert http.get(path).status_code == 200, path
    times = []
    size = 0
    for _ in range(n):
        t0 = time.perf_counter()
        r = http.get(path)
        times.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200, (path, r.status_code, r.text[:200])
        size = len(r.content)
    times.sort()
    return {"p50": statistics.median(times), "p95": times[min(len(times) - 1, math.ceil(0.95 * len(times)) - 1)],
            "bytes": size}


PAGES = [("/admin", "today, first page"), ("/admin?period=7d", "7 days, first page"),
         ("/admin?period=30d", "30 days, first page"),
         ("/admin?period=30d&sort=conv&desc=1&region=shenzhen&page=2", "30 days, 深圳 by conversion, page 2"),
         ("/admin?period=7d&sort=adds&q=SZ00", "7 days, search 'SZ00' by adds")]


def run(db: str, args) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-admin-"))
    db_url, drop_database = fresh_database(db, tmp)
    cfg = tmp / "config.yaml"
    token = secrets.token_hex(16)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cli = [sys.executable, "-m", "bot", "--config", str(cfg)]
    proc = None
    try:
        now = datetime.now(timezone.utc)
        hist = History(args, now)
        with open(tmp / "stores.csv", "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["code", "name", "clerks"])
            for st in hist.stores():
                w.writerow([st["code"], st["name"], st["clerks"][0]])
        cfg.write_text(json.dumps({
            "database_url": db_url, "public_base_url": f"http://127.0.0.1:{port}", "admin_token": token,
            "calendar_dir": str(ROOT / "content_calendar"), "stores_file": "stores.csv", "access_log": False,
            "wecom": {"corp_id": "wwbench", "agent_id": 1000002, "secret": secrets.token_hex(16), "token": "benchtoken",
                      "encoding_aes_key": "a" * 43, "api_base_url": f"http://127.0.0.1:{free_port()}/cgi-bin/"}},
            ensure_ascii=False), encoding="utf-8")
        subprocess.run(cli + ["db", "upgrade"], env=env, check=True, stdout=subprocess.DEVNULL)
        print(f"\n{db}: " + generate(db, db_url, args, now), flush=True)
        proc = subprocess.Popen(cli + ["serve", "--role", "web", "--port", str(port)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(f"http://127.0.0.1:{port}/livez", timeout=60)
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"},
                            timeout=60)
        ref = measure(http, "/livez", args.requests * 3)
        print(f"  {'page':<62} {'p50 ms':>8} {'p95 ms':>8} {'p95/livez':>10} {'KiB':>6}")
        print(f"  {'/livez (reference, no database)':<62} {ref['p50']:>8.1f} {ref['p95']:>8.1f} {1:>10.0f} "
              f"{ref['bytes'] / 1024:>6.1f}")
        worst = 0.0
        for path, label in PAGES:
            m = measure(http, path, args.requests)
            worst = max(worst, m["p95"])
            print(f"  {path + ' (' + label + ')':<62} {m['p50']:>8.1f} {m['p95']:>8.1f} "
                  f"{m['p95'] / ref['p95']:>10.0f} {m['bytes'] / 1024:>6.1f}", flush=True)
        print(f"  worst p95 {worst:.0f} ms against the target of 1,000 ms: {'met' if worst < 1000 else 'NOT met'}")
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        drop_database()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--stores", type=int, default=4800)
    ap.add_argument("--days", type=int, default=30, help="days of history, today included")
    ap.add_argument("--adds", type=float, default=12, help="mean adds per store-day (each store's own rate varies)")
    ap.add_argument("--requests", type=int, default=30, help="timed requests per page (after 2 warm-up ones)")
    args = ap.parse_args()
    print(f"GET /admin with the Bearer admin_token, {args.requests} requests a page one at a time, "
          f"`serve --role web` in its own process; {os.cpu_count()} CPUs")
    for db in (["postgresql", "sqlite"] if args.db == "both" else [args.db]):
        run(db, args)


if __name__ == "__main__":
    main()
