"""One WeCom rate limit for every process (issue 16): SqlPacer counts calls per (corp, API) in
PostgreSQL. Each process is played by its own engine and SqlPacer; the FakeClock is shared. These
tests need PostgreSQL: they skip without it, and fail under CI=true (tests/conftest.py)."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from bot.db.engine import make_engine
from bot.db.migrate import upgrade
from bot.wecom.pacer import NoRoom, Pacer, SqlPacer
from tests.conftest import _pg_schema_url

pytestmark = pytest.mark.pg
EP = "externalcontact/groupchat/get"


@pytest.fixture
def pg_url():
    admin, schema, url = _pg_schema_url()
    eng = make_engine(url)
    upgrade(eng)
    eng.dispose()
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture
def processes(pg_url, clock):
    """Two 'processes': an engine and a SqlPacer each, one limit of 50 a minute and 120 an hour."""
    engines = [make_engine(pg_url) for _ in range(2)]
    yield [SqlPacer(e, clock, 50, 120, corp_id="ww1") for e in engines]
    for e in engines:
        e.dispose()


def admitted(pacer: SqlPacer, endpoint: str, tries: int) -> int:
    n = 0
    for _ in range(tries):
        try:
            pacer.acquire(endpoint, max_wait=0)
            n += 1
        except NoRoom:
            pass
    return n


def test_two_processes_never_exceed_one_limit_together(processes, clock):
    a, b = processes
    counts = [0, 0, 0, 0]

    def run(i, pacer):   # two threads in each process, all at once
        counts[i] = admitted(pacer, EP, 40)

    threads = [threading.Thread(target=run, args=(i, p)) for i, p in enumerate([a, a, b, b])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(counts) == 50                       # the limit, together: not 2 × 50
    assert counts[0] + counts[1] > 0 and counts[2] + counts[3] > 0
    with pytest.raises(NoRoom) as e:
        b.acquire(EP, max_wait=5)
    assert 0 < e.value.wait <= 60.01               # told when the minute ends
    assert admitted(a, "externalcontact/list", 5) == 5   # per API

    clock.advance(e.value.wait)                    # the next minute: room again, shared again
    assert admitted(a, EP, 30) + admitted(b, EP, 30) == 50
    clock.advance(60)
    # the hour: 120, of which 100 are spent
    assert admitted(b, EP, 30) + admitted(a, EP, 30) == 20
    with pytest.raises(NoRoom) as e:
        a.acquire(EP, max_wait=60)
    assert e.value.wait > 60                       # blocked to the end of the clock hour


def test_a_waiting_caller_gets_room_when_the_window_ends(processes, clock):
    a, b = processes
    assert admitted(a, EP, 50) == 50
    start = clock.timestamp()
    b.acquire(EP)                                  # waits for the next minute, then is counted
    assert clock.timestamp() > start and int(clock.timestamp() // 60) == int(start // 60) + 1
    assert a.waited == 0 and b.waited > 0


def test_a_call_taken_as_the_minute_ends_counts_in_the_next_minute_too(processes, clock):
    """It may arrive at WeCom after the minute turned: the next minute must have room for it."""
    a, b = processes
    clock.advance(50)                              # 09:00:50
    assert admitted(a, EP, 30) == 30
    clock.advance(8.5)                             # 09:00:58.5, within the last 2 s of the minute
    assert admitted(b, EP, 50) == 20               # this minute: 50 in all
    clock.advance(2)                               # 09:01:00.5
    assert admitted(a, EP, 50) == 30               # the next: 50 less the 20 that may land in it
    with pytest.raises(NoRoom) as e:
        b.acquire(EP, max_wait=0)
    assert 59 < e.value.wait <= 60                 # and it is full until it ends


def test_a_call_taken_as_the_hour_ends_counts_in_the_next_hour_too(processes, clock):
    a, _ = processes                               # 120 an hour
    clock.advance(59 * 60 + 59)                    # 09:59:59
    assert admitted(a, EP, 50) == 50
    clock.advance(2)                               # 10:00:01: 50 of the hour's 120 may have landed in it
    assert admitted(a, EP, 50) == 0                # the minute: its 50 are spent by the straddlers
    clock.advance(60)
    assert admitted(a, EP, 50) == 50
    clock.advance(60)
    assert admitted(a, EP, 50) == 20               # 50 + 50 + 20 = 120 in the hour


def test_per_corp(pg_url, clock):
    eng = make_engine(pg_url)
    try:
        one, other = SqlPacer(eng, clock, 3, corp_id="ww1"), SqlPacer(eng, clock, 3, corp_id="ww2")
        assert admitted(one, EP, 5) == 3 and admitted(other, EP, 5) == 3
    finally:
        eng.dispose()


def test_a_process_that_cannot_reach_the_store_paces_itself_and_keeps_going(pg_url, clock, caplog):
    dead = make_engine("postgresql+psycopg://postgres@127.0.0.1:9/test")    # nothing listens there
    pacer = SqlPacer(dead, clock, 40, corp_id="ww1", expected_processes=4, retry_seconds=30)
    with caplog.at_level(logging.WARNING, logger="bot.wecom.pacer"):
        assert admitted(pacer, EP, 15) == 10       # 40 / 4 processes, in this process alone
        assert pacer.degraded
        pacer.acquire("externalcontact/send_welcome_msg")   # welcomes keep going out
    warnings = [r for r in caplog.records if "cannot be reached" in r.getMessage()]
    assert len(warnings) == 1                      # said once, not once a call
    dead.dispose()


def test_it_goes_back_to_the_shared_count_when_the_store_returns(pg_url, clock, monkeypatch):
    eng = make_engine(pg_url)
    pacer = SqlPacer(eng, clock, 40, corp_id="ww1", expected_processes=4, retry_seconds=30)
    real = pacer._take

    def down(*a):
        raise OperationalError("select", {}, Exception("connection refused"))

    monkeypatch.setattr(pacer, "_take", down)
    pacer.acquire(EP)
    assert pacer.degraded
    monkeypatch.setattr(pacer, "_take", real)
    clock.advance(31)
    assert admitted(pacer, EP, 45) == 40           # the whole shared limit again
    assert not pacer.degraded
    eng.dispose()


def test_the_bot_on_postgresql_shares_the_limit_and_on_sqlite_paces_itself(harness):
    pacer = harness.c.client.pacer
    if harness.c.engine.dialect.name == "postgresql":
        assert isinstance(pacer, SqlPacer) and pacer.per_minute == harness.c.settings.wecom.calls_per_minute
    else:
        assert type(pacer) is Pacer


def test_cost_of_one_shared_count(processes, capsys):
    """One round trip per call: printed for the record (pytest -s), bounded loosely for CI."""
    a, _ = processes
    a.per_minute, a.per_hour = 10**9, 0
    a.acquire(EP)                                   # connect
    n = 500
    started = time.perf_counter()
    for _ in range(n):
        a.acquire(EP)
    per_call = (time.perf_counter() - started) / n
    print(f"SqlPacer.acquire: {per_call * 1e3:.3f} ms a call over {n}")
    assert per_call < 0.05
