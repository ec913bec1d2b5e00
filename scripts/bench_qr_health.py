"""Benchmark: how fast the stalled rule catches a broken group QR, and how often it cries wolf.

    python scripts/bench_qr_health.py [--healthy 10000] [--broken 3000] [--median-adds 60 4] [--seed 1]

Simulates store-days with the bot's own rule (bot.funnel.stalled: expected_conversion,
stalled_verdict) evaluated as the bot does: on every add and on the 5-minute scheduled check.
- Traffic: a store's daily adds are lognormal around --median-adds (σ 0.6); adds arrive as a
  Poisson process over a fruit store's day curve (08:00-22:00, peaks at lunch and evening).
- Conversion: each store's true add→join rate is drawn from Beta(6, 4) (mean 0.6); a converting
  customer joins after a lognormal delay (median 90 s, long tail). Each store has 7 days of history
  (the baseline the bot shrinks toward the chain-wide rate).
- Broken: at a uniform time between 09:00 and 19:00, joins stop for everyone.
Reports detection delay (minutes and wasted adds from the break to the alert) and false alarms
per 1,000 healthy store-days. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import bisect
import math
import random

import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.config import QrHealthSettings  # noqa: E402
from bot.funnel.stalled import expected_conversion, stalled_verdict  # noqa: E402

# adds by hour of day (relative): a community fruit store, open 08:00-22:00
DAY_CURVE = {8: 2, 9: 4, 10: 6, 11: 9, 12: 10, 13: 7, 14: 5, 15: 5, 16: 6, 17: 9, 18: 11, 19: 10, 20: 7, 21: 3}
CHECK_EVERY = 5 * 60
EPOCH = datetime(2026, 11, 23, tzinfo=timezone.utc)


def arrivals(rng: random.Random, daily: float) -> list[float]:
    total = sum(DAY_CURVE.values())
    out = []
    for hour, weight in DAY_CURVE.items():
        rate = daily * weight / total / 3600.0   # per second
        t = hour * 3600.0
        while True:
            t += rng.expovariate(rate) if rate > 0 else 3600
            if t >= (hour + 1) * 3600:
                break
            out.append(t)
    return out


def simulate_day(rng: random.Random, cfg: QrHealthSettings, daily: float, p_true: float, chain_rate: float,
                 broken_at: float | None) -> tuple[float | None, int]:
    """Returns (alert time or None, adds between the break and the alert)."""
    adds = arrivals(rng, daily)
    joins = []
    for t in adds:
        if rng.random() < p_true:
            j = t + rng.lognormvariate(math.log(90), 1.0)
            if broken_at is None or j < broken_at:
                joins.append(j)
    joins.sort()
    hist_adds = max(0, int(rng.gauss(daily * 7, math.sqrt(daily * 7))))
    hist_conv = sum(1 for _ in range(hist_adds) if rng.random() < p_true)
    p = expected_conversion(hist_adds, hist_conv, chain_rate, cfg.min_rate)
    per_day = hist_adds / 7
    window, grace = cfg.window_minutes * 60, cfg.grace_minutes * 60
    checks = sorted(set(adds) | set(range(8 * 3600, 23 * 3600, CHECK_EVERY)))
    for now in checks:
        k = bisect.bisect_right(joins, now)
        last_join = joins[k - 1] if k else -1e9
        start = max(now - window, last_join)
        lo, hi = bisect.bisect_right(adds, start), bisect.bisect_right(adds, now - grace)
        ripe = [EPOCH + timedelta(seconds=a) for a in adds[lo:hi]]
        if stalled_verdict(ripe, p, cfg, adds_per_day=per_day).stalled:
            wasted = sum(1 for a in adds if broken_at is not None and broken_at <= a <= now)
            return now, wasted
    return None, 0


def pct(values, q):
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]


def run(cfg: QrHealthSettings, median_adds: float, healthy: int, broken: int, seed: int) -> None:
    rng = random.Random(seed)
    chain_rate = 0.6

    def store():
        return median_adds * math.exp(rng.gauss(0, 0.6)), rng.betavariate(6, 4)

    t0 = time.perf_counter()
    false_alarms = 0
    for _ in range(healthy):
        daily, p_true = store()
        alert, _ = simulate_day(rng, cfg, daily, p_true, chain_rate, None)
        false_alarms += alert is not None
    delays, wasted, missed, median_tier = [], [], 0, []
    for _ in range(broken):
        daily, p_true = store()
        broken_at = rng.uniform(9 * 3600, 19 * 3600)
        alert, w = simulate_day(rng, cfg, daily, p_true, chain_rate, broken_at)
        if alert is None:
            missed += 1
            continue
        minutes = (alert - broken_at) / 60
        delays.append(minutes)
        wasted.append(w)
        if 0.8 * median_adds <= daily <= 1.25 * median_adds:
            median_tier.append((minutes, w))
    took = time.perf_counter() - t0
    print(f"median store traffic {median_adds:g} adds/day (lognormal σ 0.6), rule: window {cfg.window_minutes} min, "
          f"min_adds {cfg.min_adds}, alpha {cfg.alpha}, floor {cfg.min_rate}, grace {cfg.grace_minutes:g} min")
    print(f"  healthy store-days {healthy}: false alarms {false_alarms} "
          f"= {1000 * false_alarms / healthy:.2f} per 1,000 store-days")
    print(f"  broken store-days {broken}: flagged the same day {len(delays)} ({100 * len(delays) / broken:.1f}%), "
          f"missed by closing {missed}")
    print(f"    all stores:      delay p50 {pct(delays, .5):.0f} min, p90 {pct(delays, .9):.0f} min; "
          f"wasted adds p50 {pct(wasted, .5):.0f}, p90 {pct(wasted, .9):.0f}")
    if median_tier:
        m, w = [d for d, _ in median_tier], [x for _, x in median_tier]
        print(f"    median-traffic stores (±25%, n={len(median_tier)}): delay p50 {pct(m, .5):.0f} min, "
              f"p90 {pct(m, .9):.0f} min; wasted adds p50 {pct(w, .5):.0f}, p90 {pct(w, .9):.0f}; "
              f"within 30 min: {100 * sum(d <= 30 for d in m) / len(m):.0f}%, "
              f"within 8 wasted adds: {100 * sum(x <= 8 for x in w) / len(w):.0f}%")
    print(f"  ({took:.1f}s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--healthy", type=int, default=10000)
    ap.add_argument("--broken", type=int, default=3000)
    ap.add_argument("--median-adds", type=float, nargs="+", default=[60, 4])
    ap.add_argument("--grace-minutes", type=float, default=None)
    ap.add_argument("--alpha", type=float, nargs="+", default=[None], help="default: the config default")
    ap.add_argument("--window-minutes", type=int, default=None)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    for alpha in a.alpha:
        given = {"grace_minutes": a.grace_minutes, "alpha": alpha, "window_minutes": a.window_minutes}
        cfg = QrHealthSettings(**{k: v for k, v in given.items() if v is not None})
        for m in a.median_adds:
            run(cfg, m, a.healthy, a.broken, a.seed)


if __name__ == "__main__":
    main()
