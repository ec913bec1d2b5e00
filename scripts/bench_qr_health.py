"""Benchmark: how fast the stalled rule catches a broken group QR, and how often it cries wolf.

    python scripts/bench_qr_health.py [--healthy 10000] [--broken 3000] [--median-adds 60 4] [--seed 1]
                                      [--report-prob 0.1 0.2 0.3] [--stray-report-prob 0.005]

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

Then the same store-days again with customer reports from the group-QR page (bot.funnel.reports:
`qr_health.reports_to_alert` distinct reporters inside the window, or one report and the stalled
rule at `qr_health.report_alpha`, read when a report arrives; the silence rule keeps running, and
whichever alerts first counts):
    [--report-prob 0.1 0.2 0.3] [--stray-report-prob 0.005 ...] [--report-delay-minutes 2]
    [--report-delay-sigma 0.4] [--reports-to-alert N] [--report-alpha A] [--report-min-adds N]
    (--report-prob alone: off)
- Stranded customers (an add after the break, or an earlier add whose join would have come after
  it) report with --report-prob, a lognormal delay after their add (median 2 min, σ 0.4: 5-95%
  ≈ 1-4 min; they try to scan first; the earlier ones not before their failed scan).
- Every other add, in healthy and broken stores alike, reports with --stray-report-prob
  (default 0.5% of adds, about 1 in 80 of the customers who do not join: a phone without WeChat at
  hand, an account that may not join groups, a QR scanned off its own screen, a wrong button). No
  data behind it: a guess, hence the sweep; it does not change who joins.
- The report draws come from their own random stream: the silence-only figures above are the same
  with or without them, and each report probability sees the same days and the same customers.
Prints per report probability, next to silence only from the same days: delay p50/p90 (all
stores and median-traffic stores, ±25%), wasted adds p50/p90, false alarms per 1,000 healthy
store-days (split by cause), ratios against silence only and the issue-14 goal (median-traffic
p50 ≤ 10 min and ≤ 3 wasted adds, < 1 false alarm per 1,000 healthy store-days). A day no rule
flags counts as never detected there (∞ min; its wasted adds: all of the day's after the break).

    python scripts/bench_qr_health.py --pass [--stores 4800] [--latency-ms 40] [--concurrency 8]
                                      [--serial-sample 150] [--limit 10000] [--db sqlite|postgresql]

With --pass: one QR-health pass (what the 5-minute job and `qr check` run: bot.provisioning.checks)
over a whole chain against the sandbox in its own process, with WeCom's per-API limit on both sides
(the sandbox answers 45009 past `--limit` calls a minute; the client paces itself under it) and
`--latency-ms` added to every API answer (the sandbox itself answers at once; a server in China
sees some tens of ms from WeCom). Each store has 5 groups behind its join way; a fifth of them
are near the 200 scan cap (read again every pass), the others' counts are up to 65 minutes old
(read again once an hour old), and 1% of the stores are broken (full or deleted, repaired by the
pass). The funnel holds 7 days of a chain's adds and joins (the stalled rule reads them). The
serial pass (one store at a time, as before) is timed over the first --serial-sample stores and
scaled to the chain; the concurrent pass runs over every store. Reports both against the 5-minute
period, calls per API, the rate-limit bound, 45009s and the client's waits for room.
"""

from __future__ import annotations

import argparse
import bisect
import math
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.config import QrHealthSettings  # noqa: E402
from bot.funnel.reports import relaxed_rule  # noqa: E402
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


@dataclass
class Day:
    """One simulated store-day: what the funnel holds (adds, joins, the baseline) and, per add, the
    draws of the report model (kept apart from the traffic draws: same seed, same traffic)."""
    adds: list[float]
    joins: list[float]
    p: float                       # expected conversion, from the store's history (as the bot computes it)
    per_day: float                 # the baseline's adds per day
    broken_at: float | None
    would_join: list[float | None]  # per add: when it would have joined through a working QR
    u: list[float] = field(default_factory=list)      # per add: reports iff u < its report probability
    delay: list[float] = field(default_factory=list)  # per add: seconds from the add to its report


def simulate_day(rng: random.Random, cfg: QrHealthSettings, daily: float, p_true: float, chain_rate: float,
                 broken_at: float | None) -> Day:
    adds = arrivals(rng, daily)
    joins, would_join = [], []
    for t in adds:
        j = None
        if rng.random() < p_true:
            j = t + rng.lognormvariate(math.log(90), 1.0)
            if broken_at is None or j < broken_at:
                joins.append(j)
        would_join.append(j)
    joins.sort()
    hist_adds = max(0, int(rng.gauss(daily * 7, math.sqrt(daily * 7))))
    hist_conv = sum(1 for _ in range(hist_adds) if rng.random() < p_true)
    p = expected_conversion(hist_adds, hist_conv, chain_rate, cfg.min_rate)
    return Day(adds, joins, p, hist_adds / 7, broken_at, would_join)


def last_join_before(day: Day, now: float) -> float:
    k = bisect.bisect_right(day.joins, now)
    return day.joins[k - 1] if k else -1e9


def stalled_at(day: Day, now: float, cfg: QrHealthSettings, looked_at_once: bool = False) -> bool:
    return silence_at(day, now, cfg, looked_at_once).stalled


def silence_at(day: Day, now: float, cfg: QrHealthSettings, looked_at_once: bool = False):
    """bot.funnel.findings.evaluate_stalled on the simulated funnel: the adds since the last join,
    inside the window and older than the grace, through the bot's pure rule."""
    k = bisect.bisect_right(day.joins, now)
    last_join = day.joins[k - 1] if k else -1e9
    start = max(now - cfg.window_minutes * 60, last_join)
    lo, hi = bisect.bisect_right(day.adds, start), bisect.bisect_right(day.adds, now - cfg.grace_minutes * 60)
    ripe = [EPOCH + timedelta(seconds=a) for a in day.adds[lo:hi]]
    return stalled_verdict(ripe, day.p, cfg, adds_per_day=0.0 if looked_at_once else day.per_day)


def first_stall(day: Day, cfg: QrHealthSettings) -> float | None:
    """The silence-only rule as the bot runs it: on every add and on the 5-minute check."""
    for now in sorted(set(day.adds) | set(range(8 * 3600, 23 * 3600, CHECK_EVERY))):
        if stalled_at(day, now, cfg):
            return now
    return None


def wasted_adds(day: Day, until: float | None) -> int:
    """Adds between the break and the alert (all of the day's after the break when none came)."""
    lo = bisect.bisect_left(day.adds, day.broken_at)
    hi = len(day.adds) if until is None else bisect.bisect_right(day.adds, until)
    return max(0, hi - lo)


def draw_reports(rrng: random.Random, day: Day, delay_median: float, delay_sigma: float) -> None:
    day.u = [rrng.random() for _ in day.adds]
    day.delay = [rrng.lognormvariate(math.log(delay_median), delay_sigma) for _ in day.adds]


def report_times(day: Day, report_prob: float, stray_prob: float) -> list[float]:
    """When the day's customers report from the group-QR page (one report per add, as the token allows).
    Stranded customers (an add during the break; or an earlier add whose join would have come after
    it) report with report_prob, `delay` after their add (they try to scan first; the earlier ones
    not before their failed scan). Every other add reports with stray_prob (fails for its own reasons)."""
    out = []
    for t, j, u, d in zip(day.adds, day.would_join, day.u, day.delay):
        b = day.broken_at
        if b is not None and t >= b:
            if u < report_prob:
                out.append(t + d)
        elif b is not None and j is not None and j >= b:
            if u < report_prob:
                out.append(max(t + d, j))
        elif u < stray_prob:
            out.append(t + d)
    out.sort()
    return out


def first_report_alarm(day: Day, reports: list[float], cfg: QrHealthSettings, relaxed: QrHealthSettings,
                       until: float | None) -> tuple[float, str] | None:
    """bot.funnel.reports.record_report, on each report in turn: reports_to_alert distinct customers'
    reports since the store's last join, inside the window (none cleared yet on a simulated day), with
    report_min_adds ripe adds since that join,
    else the stalled rule as one report reads it (bot.funnel.reports.relaxed_rule), at that report."""
    window = cfg.window_minutes * 60
    for k, r in enumerate(reports):
        if until is not None and r >= until:
            return None     # the silence rule had alerted already
        n = k + 1 - bisect.bisect_right(reports, max(r - window, last_join_before(day, r)), 0, k)
        silence = silence_at(day, r, relaxed, looked_at_once=True)
        if n >= cfg.reports_to_alert and silence.adds >= cfg.report_min_adds:
            return r, "reports"
        if silence.stalled:
            return r, "relaxed"
    return None


def first_stranded_report(day: Day, reports: list[float], until: float | None) -> tuple[float, str] | None:
    """The bound no report rule can beat: the alarm on the first report after the break (it would
    also alarm on every stray report, so it is no rule to ship)."""
    for r in reports:
        if until is not None and r >= until:
            return None
        if r >= day.broken_at:
            return r, "reports"
    return None


def pct(values, q):
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]


def fmt_min(x: float) -> str:
    return "never" if math.isinf(x) else f"{x:.1f}" if x < 10 else f"{x:.0f}"


def run(cfg: QrHealthSettings, median_adds: float, healthy: int, broken: int, seed: int,
        report_probs: list[float] | None = None, stray_probs: list[float] | None = None,
        delay_median: float = 120.0, delay_sigma: float = 0.4) -> list[dict]:
    rng = random.Random(seed)
    rrng = random.Random(f"reports:{seed}:{median_adds}")   # the report draws: never shift the traffic's
    chain_rate = 0.6

    def store():
        return median_adds * math.exp(rng.gauss(0, 0.6)), rng.betavariate(6, 4)

    t0 = time.perf_counter()
    false_alarms = 0
    healthy_days, broken_days = [], []
    for _ in range(healthy):
        daily, p_true = store()
        day = simulate_day(rng, cfg, daily, p_true, chain_rate, None)
        alert = first_stall(day, cfg)
        false_alarms += alert is not None
        if report_probs:
            draw_reports(rrng, day, delay_median, delay_sigma)
            healthy_days.append((day, alert))
    delays, wasted, missed, median_tier = [], [], 0, []
    for _ in range(broken):
        daily, p_true = store()
        broken_at = rng.uniform(9 * 3600, 19 * 3600)
        day = simulate_day(rng, cfg, daily, p_true, chain_rate, broken_at)
        alert = first_stall(day, cfg)
        tier = 0.8 * median_adds <= daily <= 1.25 * median_adds
        if report_probs:
            draw_reports(rrng, day, delay_median, delay_sigma)
            broken_days.append((day, alert, tier))
        if alert is None:
            missed += 1
            continue
        minutes = (alert - broken_at) / 60
        delays.append(minutes)
        wasted.append(wasted_adds(day, alert))
        if tier:
            median_tier.append((minutes, wasted[-1]))
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
    if not report_probs:
        return []
    return run_reports(cfg, median_adds, healthy_days, broken_days, report_probs, stray_probs or [0.0],
                       delay_median, delay_sigma)


def run_reports(cfg: QrHealthSettings, median_adds: float, healthy_days: list, broken_days: list,
                report_probs: list[float], stray_probs: list[float], delay_median: float,
                delay_sigma: float) -> list[dict]:
    """The same store-days again, with customer reports (bot.funnel.reports) on top of the silence rule.
    Detection is whichever of the two alerts first; a day neither flags counts as never detected (its
    wasted adds: all of the day's after the break), for the silence-only row too."""
    t0 = time.perf_counter()
    relaxed = relaxed_rule(cfg)
    rows = []

    def stats(label, q, s, alarms, causes):
        all_d, all_w, tier_d, tier_w = [], [], [], []
        for (day, _, tier), alert in zip(broken_days, alarms):
            d = math.inf if alert is None else (alert - day.broken_at) / 60
            w = wasted_adds(day, alert)
            all_d.append(d)
            all_w.append(w)
            if tier:
                tier_d.append(d)
                tier_w.append(w)
        return dict(label=label, q=q, stray=s, median_adds=median_adds, n=len(all_d), n_tier=len(tier_d),
                    flagged=sum(a is not None for a in alarms) / max(1, len(alarms)),
                    d50=pct(all_d, .5), d90=pct(all_d, .9), w50=pct(all_w, .5),
                    t_d50=pct(tier_d, .5), t_d90=pct(tier_d, .9), t_w50=pct(tier_w, .5), t_w90=pct(tier_w, .9),
                    **causes)

    for s in stray_probs:
        # healthy days: stray reports only (no one is stranded); any alarm is false
        fa = {"silence": 0, "reports": 0, "relaxed": 0}
        for day, silence in healthy_days:
            hit = first_report_alarm(day, report_times(day, 0.0, s), cfg, relaxed, silence)
            if silence is not None:
                fa["silence"] += 1
            elif hit is not None:
                fa[hit[1]] += 1
        n_h = max(1, len(healthy_days))
        fa_rate = 1000 * sum(fa.values()) / n_h
        causes = {"fa": fa_rate, "fa_silence": 1000 * fa["silence"] / n_h, "fa_reports": 1000 * fa["reports"] / n_h,
                  "fa_relaxed": 1000 * fa["relaxed"] / n_h}
        base = stats("silence only", None, s, [a for _, a, _ in broken_days], dict(causes, fa=causes["fa_silence"]))
        rows.append(base)
        for q in report_probs:
            alarms, by = [], {"silence": 0, "reports": 0, "relaxed": 0}
            for day, silence, _ in broken_days:
                hit = first_report_alarm(day, report_times(day, q, s), cfg, relaxed, silence)
                if hit is not None:
                    alarms.append(hit[0])
                    by[hit[1]] += 1
                else:
                    alarms.append(silence)
                    by["silence"] += silence is not None
            rows.append(stats(f"reports {100 * q:g}%", q, s, alarms,
                              dict(causes, by_reports=by["reports"], by_relaxed=by["relaxed"],
                                   by_silence=by["silence"])))
        for q in report_probs:   # what no rule can beat, at each report probability
            alarms = []
            for day, silence, _ in broken_days:
                hit = first_stranded_report(day, report_times(day, q, s), silence)
                alarms.append(hit[0] if hit else silence)
            rows.append(stats(f"bound {100 * q:g}%", q, s, alarms,
                              dict(causes, fa=math.nan, bound=True, by_reports=0, by_relaxed=0, by_silence=0)))
    print_report_table(cfg, median_adds, rows, len(healthy_days), delay_median, delay_sigma)
    print(f"  ({time.perf_counter() - t0:.1f}s)")
    return rows


def print_report_table(cfg, median_adds, rows, healthy, delay_median, delay_sigma) -> None:
    relaxed = (f", or 1 report + the stalled rule at report_alpha {cfg.report_alpha} from report_min_adds "
               f"{cfg.report_min_adds} adds, read once" if cfg.reports_to_alert > 1 else "")
    print(f"  customer reports (bot.funnel.reports): {cfg.reports_to_alert} distinct reporter(s) and {cfg.report_min_adds} adds "
          f"since the last join inside {cfg.window_minutes} min{relaxed}; bound = an alarm on the first report after the break "
          f"(the best any report rule can do; it would alarm on every stray report too); "
          f"report delay lognormal median {delay_median / 60:g} min σ {delay_sigma:g} after the add. "
          f"Delay and wasted adds from the break; never-flagged days count as never (∞ min, all adds after "
          f"the break); median-traffic = stores within ±25% of {median_adds:g} adds/day.")
    head = (f"  {'rule':<13} {'stray/add':>9} {'flagged':>7} {'all p50':>7} {'all p90':>7} {'med p50':>7} "
            f"{'med p90':>7} {'wasted p50':>10} {'wasted p90':>10} {'×delay':>6} {'×wasted':>7} "
            f"{'FA/1000':>7} {'(2rep/1+rx)':>11} {'first by rep/rx/sil':>19}  goal")
    print(head)
    base = None
    for r in rows:
        if r["q"] is None:
            base = r
        ratio_d = r["t_d50"] / base["t_d50"] if base and base["t_d50"] not in (0, math.inf) else float("nan")
        ratio_w = r["t_w50"] / base["t_w50"] if base and base["t_w50"] else float("nan")
        bound = r.get("bound", False)
        goal = ("(speed: met)" if r["t_d50"] <= 10 and r["t_w50"] <= 3 else "(speed: NOT met)") if bound else \
            "met" if r["t_d50"] <= 10 and r["t_w50"] <= 3 and r["fa"] < 1 else "NOT met"
        by = (f"{r['by_reports']}/{r['by_relaxed']}/{r['by_silence']}" if r["q"] is not None and not bound else "")
        fa_split = f"{r['fa_reports']:.2f}/{r['fa_relaxed']:.2f}" if r["q"] is not None and not bound else ""
        print(f"  {r['label']:<13} {r['stray']:>9g} {100 * r['flagged']:>6.1f}% {fmt_min(r['d50']):>7} "
              f"{fmt_min(r['d90']):>7} {fmt_min(r['t_d50']):>7} {fmt_min(r['t_d90']):>7} {r['t_w50']:>10.0f} "
              f"{r['t_w90']:>10.0f} {ratio_d:>6.2f} {ratio_w:>7.2f} {r['fa']:>7.2f} {fa_split:>11} {by:>19}  "
              f"{goal}")
    print(f"  (delay in minutes; med = median-traffic stores (n={rows[0]['n_tier']} of {rows[0]['n']} broken); "
          f"×delay/×wasted: median-traffic p50 against silence only; FA/1000: false alarms per 1,000 healthy "
          f"store-days (n={healthy}), any rule; of them by reports: {cfg.reports_to_alert} reporter(s) / 1 report + "
          f"relaxed rule; first by: broken days alerted first by reporters / relaxed rule / silence; goal: "
          f"median-traffic p50 ≤ 10 min and ≤ 3 wasted adds, FA < 1)")


# -- --pass: one QR-health pass over a chain, against the sandbox with the rate limits on ----------

PERIOD = 300.0                 # the QR-health job runs every 5 minutes
GROUPS_PER_STORE = 5           # 25,000 groups / 4,800 stores; a join way holds at most 5
NEAR_CAP = 0.2                 # share of join-way groups at 190-200 members: read again every pass
BROKEN_EVERY = 100             # every 100th store full, every 100th (offset) deleted: 1% each
ADDS_PER_DAY = 20_000          # the chain's new contacts a day; 60% join


def child_sandbox(port: int, corp_json: str, limit: int, latency_ms: float, stores: int) -> None:
    """The sandbox process: one clerk per store, 5 groups each, each store's contact way and join way."""
    import asyncio
    import json

    import uvicorn

    from bot.clock import SystemClock
    from bot.sandbox.backend import Corp, WeComBackend
    from bot.sandbox.routes import create_sandbox_app
    from bot.sandbox.rules import Rules

    backend = WeComBackend(Corp(**json.loads(corp_json)), SystemClock(), Rules(per_api_per_minute=limit),
                           public_url=f"http://127.0.0.1:{port}")
    rng = random.Random(4800)
    for i in range(stores):
        clerk, code = f"c{i:04d}", f"S{i:04d}"
        backend.add_clerk(clerk)
        chats = [backend.create_group(clerk, f"门店{i}福利群{g + 1}",
                                      members=rng.randint(190, 199) if rng.random() < NEAR_CAP else rng.randint(40, 180))
                 for g in range(GROUPS_PER_STORE)]
        backend.add_contact_way({"type": 1, "scene": 2, "state": code, "remark": code, "user": [clerk]})
        backend.add_join_way({"scene": 2, "chat_id_list": chats, "state": code, "remark": code,
                              "auto_create_room": 1, "room_base_name": f"门店{i}", "room_base_id": 1})
    app = create_sandbox_app(backend)
    delay = latency_ms / 1000.0

    async def with_latency(scope, receive, send):
        # WeCom's round trip, on the API only (the control plane answers at once)
        if delay and scope["type"] == "http" and scope["path"].startswith("/cgi-bin/"):
            await asyncio.sleep(delay)
        await app(scope, receive, send)

    uvicorn.run(with_latency, host="127.0.0.1", port=port, log_level="warning", backlog=2048)


def seed_bot(c, state: dict, stores: int, now: datetime, rng: random.Random) -> None:
    """The bot's database as sync and a week of traffic leave it (sync itself is not measured)."""
    from sqlalchemy import insert

    from bot.db.models import FunnelFact, GroupChat, Store

    contact = {w["state"]: w for w in state["contact_ways"].values()}
    join = {w["state"]: w for w in state["join_ways"].values()}
    rows, groups = [], []
    for i in range(stores):
        code = f"S{i:04d}"
        jw, cw = join[code], contact[code]
        rows.append(dict(code=code, name=f"门店{i}", clerks=[f"c{i:04d}"], contact_way_config_id=cw["config_id"],
                         contact_way_qr_code=cw.get("qr_code"), join_way_config_id=jw["config_id"],
                         join_way_qr_code=jw["qr_code"], join_way_chat_ids=jw["chat_id_list"], synced_at=now,
                         benefit=None))
        for chat in jw["chat_id_list"]:
            g = state["groups"][chat]
            age = 0 if g["members"] >= 190 else rng.uniform(0, 65 * 60)
            groups.append(dict(chat_id=chat, store_code=code, owner=g["owner"], name=g["name"],
                               member_count=g["members"], member_version=g["member_version"],
                               synced_at=now - timedelta(seconds=age)))
    with c.sessions.begin() as s:
        s.execute(insert(Store), rows)
        s.execute(insert(GroupChat), groups)
    facts, n = [], 0
    for day in range(7):
        for _ in range(ADDS_PER_DAY * stores // 4800):
            n += 1
            code = f"S{rng.randrange(stores):04d}"
            at = now - timedelta(days=day, seconds=rng.uniform(0, 86400))
            ext = f"wmbench{n:08d}"
            facts.append(dict(key=f"add:{n}", kind="add", store_code=code, external_userid=ext, at=at))
            if rng.random() < 0.6:
                delay = rng.lognormvariate(math.log(90), 1.0)
                facts.append(dict(key=f"join:{n}", kind="join", store_code=code, external_userid=ext,
                                  at=at + timedelta(seconds=delay), join_delay_seconds=int(delay)))
    for k in range(0, len(facts), 20_000):
        with c.sessions.begin() as s:
            s.execute(insert(FunnelFact), facts[k:k + 20_000])


def break_stores(c, base: str, codes: list[str]) -> None:
    """Every other one full (its groups at the scan cap, auto-create off), the others deleted. The
    bot learns of full groups as join callbacks would tell it: counts at the cap."""
    import httpx
    from sqlalchemy import update

    from bot.db.models import GroupChat
    for k, code in enumerate(codes):
        httpx.post(f"{base}/_sandbox/break", json={"state": code, "how": "full" if k % 2 == 0 else "deleted"},
                   timeout=30).raise_for_status()
    with c.sessions.begin() as s:
        s.execute(update(GroupChat).where(GroupChat.store_code.in_(codes[0::2])).values(member_count=200))


def calls_between(before: dict, after: dict) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def limit_bound(calls: dict[str, int], limit: int) -> float:
    """Least time the per-API limit allows: the k-th call of an API cannot start before
    floor((k-1)/limit) minutes."""
    return max((math.floor((n - 1) / limit) * 60 for n in calls.values() if n), default=0.0)


def run_pass(a) -> None:
    import json
    import os
    import shutil
    import subprocess
    import tempfile

    import httpx

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from benchlib import free_port, fresh_database, wait_http

    from bot.bootstrap import bootstrap
    from bot.clock import SystemClock
    from bot.config import Settings
    from bot.provisioning.checks import check_wecom_side
    from bot.sandbox.seed import new_corp

    corp, port = new_corp(), free_port()
    root = Path(__file__).resolve().parents[1]
    t_start = time.perf_counter()
    sandbox = subprocess.Popen([sys.executable, __file__, "--child-sandbox", str(port), json.dumps(corp.__dict__),
                                str(a.limit), str(a.latency_ms), str(a.stores)],
                               env={**os.environ, "PYTHONPATH": str(root)})
    tmp = Path(tempfile.mkdtemp(prefix="bench-qr-pass-"))
    db_url, drop_database = fresh_database(a.db, tmp)
    c = None
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/_sandbox/state", timeout=180)
        state = httpx.get(f"{base}/_sandbox/state", timeout=120).json()
        settings = Settings.model_validate({
            "database_url": db_url, "public_base_url": "http://127.0.0.1:9", "admin_token": "bench-admin-token",
            "calendar_dir": str(root / "content_calendar"),
            "wecom": {"corp_id": corp.corp_id, "agent_id": corp.agent_id, "secret": corp.secret, "token": corp.token,
                      "encoding_aes_key": corp.encoding_aes_key, "api_base_url": f"{base}/cgi-bin/",
                      "calls_per_minute": a.limit},
            "qr_health": {"concurrency": a.concurrency},
            "stores": [{"code": "S0000", "name": "门店0", "clerks": ["c0000"]}]})  # the chain is in the database
        c = bootstrap(settings, clock=SystemClock(settings.tz), migrate=True)
        rng = random.Random(a.seed)
        seed_bot(c, state, a.stores, c.clock.now(), rng)
        codes = [f"S{i:04d}" for i in range(a.stores)]
        broken = [x for i, x in enumerate(codes) if i % BROKEN_EVERY in (7, 57)]
        break_stores(c, base, broken)
        sample = codes[:min(a.serial_sample, a.stores)]
        print(f"{a.db}: {a.stores} stores, {GROUPS_PER_STORE} groups behind each join way, {len(broken)} broken "
              f"(full or deleted); limit {a.limit}/min per API (sandbox 45009 past it, client paces under it); "
              f"API latency {a.latency_ms:g} ms; set up in {time.perf_counter() - t_start:.0f}s")

        def one_pass(label: str, store_codes: list[str] | None, concurrency: int) -> tuple[float, dict, dict]:
            before = httpx.get(f"{base}/_sandbox/state", timeout=120).json()
            waited0 = c.client.pacer.waited
            t0, cpu0 = time.perf_counter(), time.process_time()
            counts = check_wecom_side(c.sessions, c.client, c.clock, c.qr_health, c.provisioner(), store_codes,
                                      concurrency=concurrency)
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            after = httpx.get(f"{base}/_sandbox/state", timeout=120).json()
            calls = calls_between(before["calls"], after["calls"])
            errors = calls_between(before["errors"], after["errors"])
            print(f"\n{label}: {wall:.1f}s wall, bot CPU {cpu:.1f}s; {counts}")
            print(f"  calls: {json.dumps(calls)}; total {sum(calls.values())}")
            print(f"  rate-limit bound {limit_bound(calls, a.limit):.0f}s; 45009s "
                  f"{sum(v for k, v in errors.items() if k.endswith(':45009'))}; other sandbox errors "
                  f"{ {k: v for k, v in errors.items() if not k.endswith(':45009')} or 'none'}; "
                  f"client waited {c.client.pacer.waited - waited0:.1f}s for room")
            return wall, counts, calls

        serial, _, _ = one_pass(f"serial pass (one store at a time) over the first {len(sample)} stores", sample, 1)
        serial_chain = serial * a.stores / len(sample)
        break_stores(c, base, [x for x in broken if x in sample])   # the sample's repairs undone: same work again
        with c.sessions.begin() as s:                            # and the counts it read an hour old again
            from sqlalchemy import update

            from bot.db.models import GroupChat
            s.execute(update(GroupChat).where(GroupChat.store_code.in_(sample), GroupChat.member_count < 190)
                      .values(synced_at=c.clock.now() - timedelta(minutes=61)))
        wall, counts, _ = one_pass(f"concurrent pass ({a.concurrency} stores at a time) over all {a.stores} stores",
                                   None, a.concurrency)
        print(f"\nQR-health pass over {a.stores} stores: {wall:.1f}s = {wall / PERIOD:.2f} of its {PERIOD:.0f}s period "
              f"(serial, scaled from {len(sample)} stores: {serial_chain:.0f}s = {serial_chain / PERIOD:.2f} of the "
              f"period); concurrent / serial = {wall / serial_chain:.2f} ({serial_chain / wall:.1f}× faster); "
              f"failed stores {counts.get('failed', 0)}; whole run {time.perf_counter() - t_start:.0f}s")
    finally:
        if c is not None:
            c.close()
        sandbox.terminate()
        sandbox.wait(10)
        drop_database()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child-sandbox":
        port, corp_json, limit, latency, stores = sys.argv[2:7]
        child_sandbox(int(port), corp_json, int(limit), float(latency), int(stores))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pass", dest="pass_", action="store_true", help="time one QR-health pass over a chain")
    ap.add_argument("--stores", type=int, default=4800)
    ap.add_argument("--latency-ms", type=float, default=40.0, help="added to every API answer of the sandbox")
    ap.add_argument("--concurrency", type=int, default=QrHealthSettings().concurrency)
    ap.add_argument("--serial-sample", type=int, default=150, help="stores the serial pass is timed over")
    ap.add_argument("--limit", type=int, default=10_000, help="calls per minute per API (WeCom: 10,000)")
    ap.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--healthy", type=int, default=10000)
    ap.add_argument("--broken", type=int, default=3000)
    ap.add_argument("--median-adds", type=float, nargs="+", default=[60, 4])
    ap.add_argument("--grace-minutes", type=float, default=None)
    ap.add_argument("--alpha", type=float, nargs="+", default=[None], help="default: the config default")
    ap.add_argument("--window-minutes", type=int, default=None)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--report-prob", type=float, nargs="*", default=[0.1, 0.2, 0.3],
                    help="chance a stranded customer reports from the group-QR page (none: silence only)")
    ap.add_argument("--stray-report-prob", type=float, nargs="+", default=[0.005],
                    help="chance any other add reports (fails for its own reasons), per add")
    ap.add_argument("--report-delay-minutes", type=float, default=2.0, help="median, lognormal, after the add")
    ap.add_argument("--report-delay-sigma", type=float, default=0.4)
    ap.add_argument("--reports-to-alert", type=int, default=None, help="default: the config default")
    ap.add_argument("--report-alpha", type=float, default=None, help="default: the config default")
    ap.add_argument("--report-min-adds", type=int, default=None, help="default: the config default")
    a = ap.parse_args()
    if a.pass_:
        run_pass(a)
        return
    for alpha in a.alpha:
        given = {"grace_minutes": a.grace_minutes, "alpha": alpha, "window_minutes": a.window_minutes,
                 "reports_to_alert": a.reports_to_alert, "report_alpha": a.report_alpha,
                 "report_min_adds": a.report_min_adds}
        cfg = QrHealthSettings(**{k: v for k, v in given.items() if v is not None})
        for m in a.median_adds:
            run(cfg, m, a.healthy, a.broken, a.seed, a.report_prob, a.stray_report_prob,
                a.report_delay_minutes * 60, a.report_delay_sigma)


if __name__ == "__main__":
    main()
