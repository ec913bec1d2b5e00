"""Periodic passes against the sandbox. QR health: bounded concurrency, one store's failure never
ends a pass, and passes that run at once alert once per transition (never after an all-clear). The
broadcast follow-up: one task's failure never ends its pass."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import select, update

from bot.db.engine import reads_of
from bot.db.models import BroadcastTask, QrFinding
from bot.provisioning import checks
from bot.scheduler import follow_up_broadcasts, run_slot
from bot.sandbox.harness import Harness
from tests.conftest import ROOT

GATE_TIMEOUT = 20.0


def findings(h, kind=None):
    with reads_of(h.c.sessions)() as s:
        return [f for f in s.scalars(select(QrFinding).order_by(QrFinding.id)) if kind is None or f.kind == kind]


def messages_to(h, clerk):
    return [m["text"]["content"] for m in h.backend.app_messages if m["touser"] == clerk and not m["dropped"]]


def alerts(texts):
    return [t for t in texts if "二维码异常" in t]


def clears(texts):
    return [t for t in texts if "已恢复" in t]


def run_passes(*passes):
    """Run each (name, fn) in its own thread at once; re-raise the first failure."""
    errors, threads = [], []

    def wrap(fn):
        def run():
            try:
                fn()
            except BaseException as e:   # noqa: BLE001 — reported to the test below
                errors.append(e)
        return run

    for name, fn in passes:
        threads.append(threading.Thread(target=wrap(fn), name=name))
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive(), f"{t.name} hung"
    if errors:
        raise errors[0]


@pytest.fixture
def after_look(monkeypatch):
    """Hooks what a pass thread does once it has read WeCom for a store and before it writes:
    `after_look[thread_name] = fn`."""
    hooks: dict = {}
    original = checks._wecom_problems

    def looked(*args, **kw):
        problems = original(*args, **kw)
        hook = hooks.get(threading.current_thread().name)
        if hook:
            hook()
        return problems

    monkeypatch.setattr(checks, "_wecom_problems", looked)
    return hooks


def test_concurrent_passes_open_one_finding_and_alert_once_when_a_qr_breaks(synced, after_look):
    h = synced
    h.backend.break_qr("SZ001", "full")
    h.backend.inject("externalcontact/groupchat/update_join_way", 48002, times=20)   # no repair
    h.clock.advance(3700)                                 # the counts are read again
    both = threading.Barrier(2, timeout=GATE_TIMEOUT)     # both have seen it before either writes
    after_look.update({"pass-a": both.wait, "pass-b": both.wait})
    run_passes(("pass-a", lambda: h.c.check_qr(["SZ001"])), ("pass-b", lambda: h.c.check_qr(["SZ001"])))
    h.pump()
    (f,) = findings(h)
    assert (f.kind, f.resolved_at) == ("full", None)
    assert len(alerts(messages_to(h, "zhangsan"))) == 1


def test_concurrent_passes_send_one_all_clear_when_an_open_finding_clears(synced, after_look):
    h = synced
    h.backend.break_qr("SZ001", "full")
    h.backend.inject("externalcontact/groupchat/update_join_way", 48002, times=20)
    h.clock.advance(3700)
    h.c.check_qr(["SZ001"])
    h.pump()
    assert [f.kind for f in findings(h) if f.resolved_at is None] == ["full"]
    for way in h.backend.join_ways.values():               # the clerk turns auto-create back on
        if way["state"] == "SZ001":
            way["auto_create_room"] = 1
    h.clock.advance(300)
    both = threading.Barrier(2, timeout=GATE_TIMEOUT)
    after_look.update({"pass-a": both.wait, "pass-b": both.wait})
    run_passes(("pass-a", lambda: h.c.check_qr(["SZ001"])), ("pass-b", lambda: h.c.check_qr(["SZ001"])))
    h.pump()
    (f,) = findings(h)
    assert f.resolved_at is not None
    texts = messages_to(h, "zhangsan")
    assert (len(alerts(texts)), len(clears(texts))) == (1, 1)
    assert not alerts(texts[texts.index(clears(texts)[-1]):])     # no alarm after the all-clear


def test_a_pass_that_looked_before_a_repair_does_not_alarm_after_its_all_clear(synced, after_look):
    """The reported race: pass A and pass B both see the full QR; A repairs it and says so; B's own
    repair then finds nothing to change, and before this fix it opened a fresh alarm."""
    h = synced
    h.backend.break_qr("SZ001", "full")
    h.clock.advance(3700)
    both = threading.Barrier(2, timeout=GATE_TIMEOUT)
    a_done = threading.Event()

    def a_looked():
        both.wait()

    def b_looked():
        both.wait()
        assert a_done.wait(GATE_TIMEOUT), "pass A did not finish"
        h.clock.advance(1)

    def pass_a():
        h.c.check_qr(["SZ001"])
        a_done.set()

    after_look.update({"pass-a": a_looked, "pass-b": b_looked})
    run_passes(("pass-a", pass_a), ("pass-b", lambda: h.c.check_qr(["SZ001"])))
    h.pump()
    assert [w["auto_create_room"] for w in h.backend.join_ways.values() if w["state"] == "SZ001"] == [1]
    (msg,) = messages_to(h, "zhangsan")
    assert "已自动修复" in msg
    (f,) = findings(h)
    assert (f.kind, f.resolved_at is not None) == ("full", True)


def test_concurrent_repairs_tell_the_clerk_once(synced, after_look):
    h = synced
    h.backend.break_qr("SZ002", "deleted")
    both = threading.Barrier(2, timeout=GATE_TIMEOUT)
    after_look.update({"pass-a": both.wait, "pass-b": both.wait})
    run_passes(("pass-a", lambda: h.c.check_qr(["SZ002"])), ("pass-b", lambda: h.c.check_qr(["SZ002"])))
    h.pump()
    assert "SZ002" in {w["state"] for w in h.backend.join_ways.values()}
    for clerk in ("lisi", "wangwu"):
        (msg,) = messages_to(h, clerk)
        assert "已自动修复" in msg and "群二维码已失效" in msg
    assert [f.resolved_at is not None for f in findings(h)] == [True]


def test_a_pass_that_looked_before_a_break_does_not_clear_the_finding(synced, after_look):
    """B reads a healthy QR; the QR breaks; A reads it broken and alerts; B must not then clear
    A's finding (an all-clear followed, next pass, by the same alarm again)."""
    h = synced
    h.backend.inject("externalcontact/groupchat/update_join_way", 48002, times=20)
    h.clock.advance(3700)
    b_looked_ev, a_done = threading.Event(), threading.Event()

    def a_looked():
        pass

    def b_looked():
        b_looked_ev.set()
        assert a_done.wait(GATE_TIMEOUT), "pass A did not finish"

    def pass_a():
        assert b_looked_ev.wait(GATE_TIMEOUT)
        h.clock.advance(3700)                             # later, and the counts are read again
        h.backend.break_qr("SZ001", "full")
        h.c.check_qr(["SZ001"])
        a_done.set()

    after_look.update({"pass-a": a_looked, "pass-b": b_looked})
    run_passes(("pass-a", pass_a), ("pass-b", lambda: h.c.check_qr(["SZ001"])))
    h.c.check_qr(["SZ001"])                               # the next pass: still broken, still one alert
    h.pump()
    (f,) = findings(h)
    assert (f.kind, f.resolved_at) == ("full", None)
    texts = messages_to(h, "zhangsan")
    assert (len(alerts(texts)), len(clears(texts))) == (1, 0)


def test_a_join_settled_during_a_pass_clears_a_stall_once_and_no_alarm_follows(synced):
    h = synced
    h.backend.break_qr("SZ002", "nobody")
    for _ in range(16):
        h.driver.member_adds_clerk("SZ002")
        h.clock.advance(60)
        h.pump()
    assert [f.kind for f in findings(h)] == ["stalled"]
    h.backend.break_qr("SZ002", "fix")
    ext = h.driver.member_adds_clerk("SZ002").fields["ExternalUserID"]
    h.pump()
    h.clock.advance(30)
    h.driver.member_joins_group("SZ002", ext)             # stored; settled by the pump below
    run_passes(("settle", h.pump), ("pass-a", lambda: h.c.check_qr(["SZ002"])),
               ("pass-b", lambda: h.c.check_qr(["SZ002"])))
    h.c.check_qr(["SZ002"])
    h.pump()
    (f,) = findings(h)
    assert f.resolved_at is not None
    for clerk in ("lisi", "wangwu"):
        texts = messages_to(h, clerk)
        assert (len(alerts(texts)), len(clears(texts))) == (1, 1), texts
        assert not alerts(texts[texts.index(clears(texts)[-1]):])     # no alarm after the all-clear


def test_a_stall_does_not_reopen_from_adds_older_than_its_all_clear(synced):
    """A join recorded late carries WeCom's older join_time: the adds after it but before the
    all-clear were judged already, so they do not open the stall again."""
    h = synced
    early = h.driver.member_adds_clerk("SZ002").fields["ExternalUserID"]
    h.pump()
    h.clock.advance(30)
    h.backend.rules.groupchat_get_lag = 1500              # WeCom shows this member only in 25 min
    h.driver.member_joins_group("SZ002", early)
    h.backend.rules.groupchat_get_lag = 0.0
    for _ in range(8):                                    # the bot's lag retries run out: no join yet
        h.pump()
        h.clock.advance(2.1)
    h.backend.break_qr("SZ002", "nobody")
    for _ in range(16):
        h.driver.member_adds_clerk("SZ002")
        h.pump()
        h.clock.advance(60)
    h.pump()
    assert [f.kind for f in findings(h) if f.resolved_at is None] == ["stalled"]
    h.backend.break_qr("SZ002", "fix")
    h.clock.advance(600)                                  # the early member is visible now
    chat = next(c for c, g in h.backend.groups.items() if any(m.userid == early for m in g.members))
    h.driver.member_invited(chat)                         # a read of the group finds the early join
    h.pump()
    assert all(f.resolved_at is not None for f in findings(h))
    h.clock.advance(60)
    h.c.check_qr(["SZ002"])
    h.driver.member_adds_clerk("SZ002")
    h.pump()
    texts = messages_to(h, "lisi")
    assert (len(alerts(texts)), len(clears(texts))) == (1, 1), texts
    assert not alerts(texts[texts.index(clears(texts)[-1]):])     # no alarm after the all-clear


def test_one_stores_wecom_error_does_not_stop_the_pass(synced):
    h = synced
    with h.c.sessions.begin() as s:                       # SZ001's counts near the cap: read again
        s.execute(update(checks.GroupChat).where(checks.GroupChat.store_code == "SZ001").values(member_count=195))
    h.backend.inject("externalcontact/groupchat/get", -1, times=h.c.client.max_attempts)   # ... and fails
    h.backend.break_qr("SZ002", "deleted")
    # one at a time, SZ001 first: the injected errors are SZ001's alone
    counts = checks.check_wecom_side(h.c.sessions, h.c.client, h.clock, h.c.qr_health, h.c.provisioner(),
                                     concurrency=1)
    h.pump()
    assert (counts["stores"], counts["failed"], counts["repaired"]) == (2, 1, 1)
    assert any("已自动修复" in m for m in messages_to(h, "lisi"))


def test_one_stores_unexpected_error_does_not_stop_the_pass(synced, caplog, monkeypatch):
    h = synced
    real = checks._wecom_problems

    def buggy(st, *a, **kw):                              # a bug that bites one store only
        if st.code == "SZ001":
            raise KeyError("chat_id_list")
        return real(st, *a, **kw)
    monkeypatch.setattr(checks, "_wecom_problems", buggy)
    h.backend.break_qr("SZ001", "deleted")
    h.backend.break_qr("SZ002", "deleted")
    counts = h.c.check_qr(["SZ001", "SZ002"])
    h.pump()
    assert (counts["stores"], counts["failed"], counts["repaired"]) == (2, 1, 1)
    assert "SZ002" in {w["state"] for w in h.backend.join_ways.values()}
    assert any("qr check SZ001 failed" in r.getMessage() for r in caplog.records)


@pytest.fixture
def twelve(db_url, clock):
    stores = [{"code": f"GZ{i:03d}", "name": f"广州{i}号店", "clerks": [f"clerk{i}"]} for i in range(12)]
    h = Harness(database_url=db_url, stores=stores, clock=clock, calendar_dir=ROOT / "content_calendar",
                workers=False, settings_overrides={"qr_health": {"concurrency": 3}})
    h.start()
    report = h.sync()
    assert not report.failed, report.summary()
    yield h
    h.stop()


def test_a_pass_checks_stores_concurrently_within_its_bound(twelve, monkeypatch):
    h = twelve
    api = h.c.client.join_way
    original = api.get_join_way
    lock, in_flight, peak = threading.Lock(), [0], [0]

    def slow_get(config_id):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        try:
            time.sleep(0.05)                               # WeCom's latency, so calls overlap
            return original(config_id)
        finally:
            with lock:
                in_flight[0] -= 1

    monkeypatch.setattr(api, "get_join_way", slow_get)
    counts = h.c.check_qr()
    assert (counts["stores"], counts["failed"]) == (12, 0)
    assert 2 <= peak[0] <= 3                               # at once, and never past qr_health.concurrency
    peak[0] = 0
    checks.check_wecom_side(h.c.sessions, h.c.client, h.clock, h.c.qr_health, h.c.provisioner(), concurrency=1)
    assert peak[0] == 1


def test_one_follow_up_tasks_failure_does_not_stop_the_others(synced):
    h = synced
    h.clock.advance(3600)                                 # 10:00 on Monday: SZ002's two owners get a mass message
    run_slot(h.c, "10:00")
    h.clock.advance(60)
    h.pump()
    with h.c.sessions.begin() as s:                       # the first task holds a row the code cannot read
        first = s.scalars(select(BroadcastTask).order_by(BroadcastTask.id)).first()
        first.reminds = ["not a time"]
        broken_msgid = first.msgid
    h.clock.advance(3700)                                 # unconfirmed for over an hour: remind
    follow_up_broadcasts(h.c)
    h.pump()
    reminds = {tpl["msgid"]: len(tpl["reminds"]) for tpl in h.backend.templates.values()}
    assert len(reminds) == 2 and reminds.pop(broken_msgid) == 0
    assert list(reminds.values()) == [1]
