"""The store table's sparklines on /admin: each store's daily adds and joined over 14 days, the same
figures `wecom-bot report --date D` prints for each day, from one fact query for the whole page; and the
dashboard's one-query counts (bot.funnel.figures.funnels) agree with funnel() on awkward histories."""

from __future__ import annotations

import random
import re
from datetime import date, datetime, timedelta

import httpx
import pytest
from sqlalchemy import event

from bot.clock import SHANGHAI
from bot.admin.dashboard_figures import DashboardFigures
from bot.db.engine import reads_of
from bot.funnel.facts import record_fact
from bot.funnel.figures import combined, converted_by, funnel, funnels, summed
from bot.report import print_report
from bot.sandbox.harness import Harness
from tests.conftest import ROOT, STORES
from tests.contract.test_admin import login

BEARER = {"Authorization": "Bearer harness"}
COUNTS = ("adds", "viewed", "reports", "converted", "joins", "joins_other", "leaves", "clerk_deleted")


@pytest.fixture
def h(db_url, clock):
    h = Harness(database_url=db_url, stores=STORES, clock=clock, calendar_dir=ROOT / "content_calendar",
                workers=False)
    h.start()
    report = h.sync()
    assert not report.failed, report.summary()
    yield h
    h.stop()


def sparkline(page: str, code: str) -> tuple[list[int], list[int], str]:
    row = re.search(rf'<tr class="store-row" data-code="{code}">(.*?)</tr>', page, re.S).group(1)
    svg = re.search(r'<svg class="spark"[^>]*>', row).group(0)
    adds = [int(n) for n in re.search(r'data-adds="([^"]*)"', svg).group(1).split(",")]
    joined = [int(n) for n in re.search(r'data-joined="([^"]*)"', svg).group(1).split(",")]
    label = re.search(r'aria-label="([^"]*)"', svg).group(1)
    assert re.search(r"<title>([^<]*)</title>", row).group(1) == label
    return adds, joined, label


def reported(h, day: date, code: str) -> tuple[int, int]:
    """(adds, joined) of the store's line in `wecom-bot report --date day`."""
    lines: list[str] = []
    print_report(h.c.sessions, h.c.settings.tz, day, out=lines.append)
    line = next(x for x in lines if x.startswith(code + " "))
    cols = line.split()
    return int(cols[2]), int(cols[4])     # store, name, adds, viewed, joined, ...


def test_the_sparkline_shows_each_days_adds_and_joins_as_the_report_does(h):
    start = h.clock.now().astimezone(SHANGHAI).date()          # Monday 2026-11-23, 09:00
    # day 0: three adds at SZ001, two join within the minute; one add at SZ002
    d0 = [h.driver.member_adds_clerk("SZ001").fields["ExternalUserID"] for _ in range(3)]
    h.driver.member_adds_clerk("SZ002")
    h.pump()
    h.clock.advance(40)
    for ext in d0[:2]:
        h.driver.member_joins_group("SZ001", ext)
    h.pump()
    # day 1: two adds, one joins; the day-0 straggler joins too (a join without that day's add)
    h.clock.advance(hours=24)
    d1 = [h.driver.member_adds_clerk("SZ001").fields["ExternalUserID"] for _ in range(2)]
    h.pump()
    h.clock.advance(30)
    h.driver.member_joins_group("SZ001", d1[0])
    h.driver.member_joins_group("SZ001", d0[2])
    h.pump()
    # day 3: one add, nobody joins
    h.clock.advance(hours=48)
    h.driver.member_adds_clerk("SZ001")
    h.pump()
    today = h.clock.now().astimezone(SHANGHAI).date()
    assert today == start + timedelta(days=3)

    page = httpx.get(f"{h.bot.url}/admin", headers=BEARER).text
    adds, joined, label = sparkline(page, "SZ001")
    assert adds == [0] * 10 + [3, 2, 0, 1]                     # 14 days, today last
    assert joined == [0] * 10 + [2, 1, 0, 0]
    assert label.startswith(f"SZ001 近14天（{today - timedelta(days=13):%m-%d}至{today:%m-%d}）")
    assert "加好友 " + " ".join(map(str, adds)) in label and "进群 " + " ".join(map(str, joined)) in label
    days = [today - timedelta(days=back) for back in range(13, -1, -1)]
    assert [reported(h, d, "SZ001") for d in days] == list(zip(adds, joined))
    assert sparkline(page, "SZ002")[:2] == ([0] * 10 + [1, 0, 0, 0], [0] * 14)
    # the drawing: a bar per day with adds, a point of the joined line for every day
    row = page.split('data-code="SZ001"', 1)[1].split("</tr>", 1)[0]
    assert re.search(r'<path d="([^"]+)"', row).group(1).count("z") == 3
    assert len(re.search(r'<polyline points="([^"]+)"', row).group(1).split()) == 14
    # the 7-day table (the period's own window: the straggler counts as converted there) and the days agree
    week = httpx.get(f"{h.bot.url}/admin", headers=BEARER, params={"period": "7d"}).text
    assert re.search(r'data-code="SZ001">.*?<td class="n">(\d+)</td><td class="n">([^<]+)</td>', week, re.S).groups() \
        == ("6", "67%")                                       # 4 of 6 adds joined in the week


def test_one_fact_query_draws_every_sparkline_on_the_page(h):
    h.driver.member_adds_clerk("SZ001")
    h.pump()
    statements: list[str] = []

    def seen(conn, cursor, statement, params, context, executemany):
        if "funnel_fact" in statement:
            statements.append(statement)

    event.listen(h.c.engine, "before_cursor_execute", seen)
    try:
        assert httpx.get(f"{h.bot.url}/admin", headers=BEARER).status_code == 200
    finally:
        event.remove(h.c.engine, "before_cursor_execute", seen)
    # first of the day: the last fact id, the periods' closed days (one query for the three), today's facts,
    # what today's joins convert, the shown stores' 13 closed days (one query for all of them)
    assert len(statements) == 5
    statements.clear()
    event.listen(h.c.engine, "before_cursor_execute", seen)
    try:
        assert httpx.get(f"{h.bot.url}/admin", headers=BEARER, params={"period": "7d"}).status_code == 200
    finally:
        event.remove(h.c.engine, "before_cursor_execute", seen)
    assert len(statements) == 3        # kept: the late-fact probe, today's facts, what today's joins convert


def test_a_clerk_sees_sparklines_for_their_stores_only(h):
    h.driver.member_adds_clerk("SZ002")
    h.pump()
    assert httpx.get(f"{h.bot.url}/admin", headers=BEARER).text.count('<svg class="spark"') == 2
    mine = login(h, "zhangsan").get("/admin").text
    assert mine.count('<svg class="spark"') == 1 and "SZ001 近14天" in mine and "SZ002" not in mine


@pytest.mark.parametrize("seed", [1, 2])
def test_the_one_query_counts_agree_with_the_report_funnel(db_url, clock, seed):
    """Random facts over three weeks with the awkward cases: a join before the add, a re-add after a join,
    joins the next day or never, facts without a store; every window and every day checked."""
    with Harness(database_url=db_url, stores=STORES, clock=clock, calendar_dir=ROOT / "content_calendar",
                 workers=False) as h:
        rng = random.Random(seed)
        tz = h.c.settings.tz
        first = date(2026, 11, 2)
        with h.c.sessions() as s, s.begin():
            for n in range(400):
                code = rng.choice(["SZ001", "SZ002", None])
                ext = f"wm{rng.randrange(120)}"
                at = datetime(2026, 11, 2, tzinfo=SHANGHAI) + timedelta(seconds=rng.randrange(21 * 86400))
                kind = rng.choice(["add", "add", "add", "join", "join", "viewed", "leave", "clerk_deleted",
                                   "join_other", "report:error"])
                record_fact(s, key=f"t:{n}", kind=kind, store_code=code, external_userid=ext, at=at)
            # same-second add and join (WeCom's whole seconds): converted
            at = datetime(2026, 11, 10, 12, tzinfo=SHANGHAI)
            record_fact(s, key="t:same:add", kind="add", store_code="SZ001", external_userid="wm_same", at=at)
            record_fact(s, key="t:same:join", kind="join", store_code="SZ001", external_userid="wm_same", at=at)
        windows = [(first + timedelta(days=a), first + timedelta(days=a + span))
                   for a in range(0, 21, 3) for span in (0, 1, 6, 20) if a + span < 21]
        with reads_of(h.c.sessions)() as s:
            got = funnels(s, windows, tz)
            want = [funnel(s, a, b, tz) for a, b in windows]
            scoped = funnels(s, windows, tz, ["SZ002"])
            days = [first + timedelta(days=i) for i in range(21)]
            daily = funnels(s, [(d, d) for d in days], tz, ["SZ001", "SZ002"])
            per_day = [funnel(s, d, d, tz) for d in days]
            # a window as the dashboard keeps it: its closed days, its last day, what that day's joins convert
            split = []
            for a, b in windows:
                closed = funnels(s, [(a, b - timedelta(days=1))], tz)[0] if b > a else {}
                split.append(combined(closed, funnel(s, b, b, tz), converted_by(s, [a], b, tz)[0]))
            # the dashboard's cards and table for the last of those days (today: three windows at once)
            today = first + timedelta(days=20)
            backs = [0, 6, 20]
            dash = DashboardFigures(tz, 14)
            table, cards, _ = dash.periods(s, dash.closed(s, today, None), backs, 6, None)
            whole = [funnel(s, today - timedelta(days=b), today, tz) for b in backs]

        def counts(figs):
            return {code: tuple(getattr(f, k) for k in COUNTS) for code, f in figs.items()
                    if any(getattr(f, k) for k in COUNTS)}

        assert [counts(g) for g in got] == [counts(w) for w in want]
        assert any(counts(w)["SZ001"][3] for w in want if "SZ001" in counts(w))      # some converted adds
        assert [counts(g) for g in scoped] == [{k: v for k, v in counts(w).items() if k == "SZ002"} for w in want]
        assert [counts(d) for d in daily] == [counts(d) for d in per_day]
        assert [counts(w) for w in split] == [counts(w) for w in want]
        # each card is every store's figures of its window added up, the "no store" facts included
        assert [counts({"*": c}) for c in cards] == [counts({"*": summed(w)}) for w in whole]
        assert counts(table) == counts(whole[1])
