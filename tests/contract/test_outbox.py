"""Durability: a crash or restart never loses or repeats a send; racing workers never double-send."""

import threading
from datetime import timedelta

from bot import events as ev
from sqlalchemy import update

from bot.messaging.claims import claim_due
from bot.db.models import Event, FunnelFact, Outbox
from bot.messaging.inbox import EventDispatcher, urgent
from bot.messaging.outbox import Executor, OutboxRepo
from bot.messaging.uow import UnitOfWork
from tests.contract.helpers import count, outbox, welcomes


def queue_app_messages(h, n, kind="app_message"):
    with UnitOfWork(h.c.sessions, h.clock) as uow:
        for i in range(n):
            uow.outbox.add(kind, f"test:{i}", {"touser": ["zhangsan"], "msgtype": "text",
                                               "content": {"content": f"消息 {i}"}})
        uow.commit()


def drain_in_threads(runners) -> None:
    """Each runner (dispatcher or outbox worker) in its own thread until nothing is due."""
    def drain(r):
        while r.run_once():
            pass

    threads = [threading.Thread(target=drain, args=(r,)) for r in runners]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_outbox_add_is_idempotent_by_key(harness):
    queue_app_messages(harness, 3)
    queue_app_messages(harness, 3)
    assert count(harness, Outbox) == 3


def test_restart_with_pending_events_and_outbox_rows_sends_each_once(synced):
    h = synced
    for _ in range(4):
        h.driver.member_adds_clerk("SZ001")
    h.c.dispatcher("before-crash").run_once()        # welcomes queued, none sent; the adds' rests pending
    for _ in range(2):
        h.driver.member_adds_clerk("SZ002")          # stored, not yet handled
    assert count(h, Outbox, status="pending", kind="send_welcome_msg") == 4
    assert count(h, Event, status="pending", priority=1) == 4 and count(h, Event, status="pending", priority=0) == 2
    h.restart_bot()
    h.with_workers = True
    h.c.start_workers()
    assert h.wait_for(lambda: len(h.backend.welcomes) == 6 and {w.status for w in welcomes(h)} == {"sent"})
    assert h.backend.calls["externalcontact/send_welcome_msg"] == 6


def test_a_crashed_workers_row_is_reclaimed_after_its_lease(harness):
    h = harness
    queue_app_messages(h, 1)
    with h.c.sessions.begin() as s:                   # worker A claims, then dies before sending
        (row,) = claim_due(s, Outbox, now=h.clock.now(), owner="A", limit=1, lease=timedelta(seconds=30))
    b = h.c.outbox_worker("B")
    assert b.run_once() == 0                          # leased: nobody else takes it
    h.clock.advance(31)
    assert b.run_once() == 1
    (row,) = outbox(h)
    assert row.status == "done" and row.attempts == 2
    assert len(h.backend.app_messages) == 1


def test_racing_workers_send_each_row_once(harness):
    h = harness
    queue_app_messages(h, 28)            # to one clerk: inside WeCom's 30 a minute
    drain_in_threads([h.c.outbox_worker(f"w{i}") for i in range(4)])
    sent = [m["text"]["content"] for m in h.backend.app_messages]
    assert sorted(sent) == sorted(f"消息 {i}" for i in range(28))
    assert count(h, Outbox, status="done") == 28


def test_racing_dispatchers_handle_each_event_once(synced):
    h = synced
    for _ in range(20):
        h.driver.member_adds_clerk("SZ001")
    drain_in_threads([h.c.dispatcher(f"d{i}") for i in range(3)])
    assert count(h, Outbox, kind="send_welcome_msg") == 20 and len(welcomes(h)) == 20


def test_a_failing_handler_leaves_its_event_retryable(synced):
    h = synced
    calls = []

    def broken(evt, uow):
        calls.append(evt)
        uow.outbox.add("app_message", "never", {})
        raise RuntimeError("boom")

    d = EventDispatcher(h.c.sessions, h.clock, {ev.ContactAdded: [broken]}, {}, owner="t")
    h.driver.member_adds_clerk("SZ001")
    assert d.run_once() == 1
    with h.c.sessions() as s:
        (e,) = s.query(Event).all()
    assert e.status == "pending" and "boom" in e.last_error and count(h, Outbox) == 0  # rolled back
    h.clock.advance(5)
    assert d.run_once() == 1 and len(calls) == 2


def test_unknown_outbox_kind_is_dead_not_spinning(harness):
    queue_app_messages(harness, 1, kind="no_such_kind")
    harness.pump()
    (row,) = outbox(harness)
    assert row.status == "dead" and "no executor" in row.last_error


def test_an_add_jumps_a_backlog_of_group_events(synced):
    """A welcome code dies in 20 s: adds are handled before a backlog of less urgent events."""
    h = synced
    for _ in range(40):
        h.driver.member_joins_group("SZ001")
    h.driver.member_adds_clerk("SZ001")
    d = h.c.dispatcher("d")
    d.batch = 1
    d.run_once()
    assert len(welcomes(h)) == 1
    assert h.c.outbox_worker("o").run_once() == 1 and len(h.backend.welcomes) == 1


def events(h) -> list[Event]:
    with h.c.sessions() as s:
        return list(s.query(Event).order_by(Event.id))


def test_an_add_commits_its_welcome_first_and_hands_the_rest_back(synced):
    """The welcome (urgent) commits on its own; the funnel's and the tags' work of the add waits its turn
    at priority 1 and, once done, does not run the welcome again."""
    h = synced
    h.driver.member_adds_clerk("SZ001")
    d = h.c.dispatcher("d")
    assert d.run_once() == 1
    (e,) = events(h)
    assert (e.status, e.priority, e.attempts, e.claimed_by) == ("pending", 1, 0, None) and e.urgent_done_at
    assert len(welcomes(h)) == 1 and count(h, Outbox, kind="send_welcome_msg") == 1
    assert count(h, FunnelFact) == 0 and count(h, Outbox, kind="mark_tag") == 0
    assert h.c.outbox_worker("o").run_once() == 1 and len(h.backend.welcomes) == 1   # sent before the rest
    assert d.run_once() == 1
    (e,) = events(h)
    assert e.status == "done" and e.handled_at and e.attempts == 1
    assert count(h, FunnelFact, kind="add") == 1 and count(h, Outbox, kind="mark_tag") == 1
    assert len(welcomes(h)) == 1 and count(h, Outbox, kind="send_welcome_msg") == 1


def test_what_arrives_after_an_add_in_its_batch_still_runs_after_the_adds_rest(synced):
    """A customer who adds the clerk and deletes them at once: the deletion's fact reads the add's (its
    store), so it is handed back unrun with the add and claimed again behind the add's rest."""
    h = synced
    added = h.driver.member_adds_clerk("SZ001").fields
    h.driver.member_deletes_clerk(added["ExternalUserID"], added["UserID"])
    d = h.c.dispatcher("d")
    assert d.run_once() == 2
    add, deletion = events(h)
    assert (add.status, add.priority) == ("pending", 1) and add.urgent_done_at
    assert (deletion.status, deletion.attempts, deletion.urgent_done_at) == ("pending", 0, None)
    h.pump()
    with h.c.sessions() as s:
        facts = {f.kind: f for f in s.query(FunnelFact)}
    assert facts["clerk_deleted"].store_code == "SZ001" == facts["add"].store_code
    assert {e.status for e in events(h)} == {"done"}


def test_a_burst_queues_every_welcome_before_any_adds_other_work(synced):
    """Claimed 16 at a time, 20 adds: the first batch queues 16 welcomes and nothing else; the second
    takes the 4 adds still urgent first, then 12 of the rests."""
    h = synced
    for _ in range(20):
        h.driver.member_adds_clerk("SZ001")
    d = h.c.dispatcher("d")
    assert d.batch == 16
    assert d.run_once() == 16
    assert len(welcomes(h)) == 16 and count(h, FunnelFact) == 0
    assert d.run_once() == 16
    assert len(welcomes(h)) == 20 and count(h, FunnelFact) == 12
    h.pump()
    assert count(h, FunnelFact, kind="add") == 20 and len(h.backend.welcomes) == 20
    assert {e.status for e in events(h)} == {"done"}


def test_when_the_rest_of_an_add_fails_its_welcome_stands_and_only_the_rest_is_retried(synced):
    h = synced
    welcomed, rest = [], []

    @urgent
    def welcome(evt, uow):
        welcomed.append(evt)
        uow.outbox.add("app_message", f"welcome:{evt.external_userid}", {})

    def broken(evt, uow):
        rest.append(evt)
        uow.outbox.add("app_message", f"rest:{evt.external_userid}", {})
        raise RuntimeError("boom")

    d = EventDispatcher(h.c.sessions, h.clock, {ev.ContactAdded: [welcome, broken]}, {}, owner="t")
    h.driver.member_adds_clerk("SZ001")
    assert d.run_once() == 1 and (len(welcomed), len(rest)) == (1, 0)
    assert d.run_once() == 1 and (len(welcomed), len(rest)) == (1, 1)
    (e,) = events(h)
    assert e.status == "pending" and "boom" in e.last_error and e.urgent_done_at
    assert [r.key.split(":")[0] for r in outbox(h)] == ["welcome"]    # the rest rolled back, the welcome kept
    h.clock.advance(5)
    assert d.run_once() == 1 and (len(welcomed), len(rest)) == (1, 2)


def test_an_add_whose_urgent_handler_fails_runs_whole_and_is_retried_whole(synced):
    h = synced
    calls = []

    @urgent
    def welcome(evt, uow):
        calls.append("welcome")
        raise RuntimeError("boom")

    def rest(evt, uow):
        calls.append("rest")

    d = EventDispatcher(h.c.sessions, h.clock, {ev.ContactAdded: [welcome, rest]}, {}, owner="t")
    h.driver.member_adds_clerk("SZ001")
    assert d.run_once() == 1 and calls == ["welcome", "welcome"]   # alone, then whole: it fails again
    (e,) = events(h)
    assert (e.status, e.priority, e.urgent_done_at) == ("pending", 0, None) and "boom" in e.last_error


def test_one_add_failing_its_urgent_handler_leaves_the_batchs_other_welcomes_standing(synced):
    """The batch's urgent work is one transaction; when one add's fails, the others are tried alone and
    hand back their rests, and the failing add runs whole (and fails, retryable)."""
    h = synced
    adds = [h.driver.member_adds_clerk("SZ001").fields["ExternalUserID"] for _ in range(3)]

    @urgent
    def welcome(evt, uow):
        if evt.external_userid == adds[1]:
            raise RuntimeError("boom")
        uow.outbox.add("app_message", f"welcome:{evt.external_userid}", {})

    def rest(evt, uow):
        pass

    d = EventDispatcher(h.c.sessions, h.clock, {ev.ContactAdded: [welcome, rest]}, {}, owner="t")
    assert d.run_once() == 3
    assert sorted(r.key for r in outbox(h)) == sorted(f"welcome:{a}" for a in (adds[0], adds[2]))
    first, failed, third = events(h)
    assert first.urgent_done_at and third.urgent_done_at and (first.priority, third.priority) == (1, 1)
    assert (failed.status, failed.priority, failed.urgent_done_at) == ("pending", 0, None)
    assert "boom" in failed.last_error


def test_a_batch_settles_in_one_go_but_row_by_row(harness):
    """Rows of a batch settle together; a row whose lease another worker took, or whose domain settle
    fails, is left to run again, and the rest of the batch still settles."""
    h = harness
    queue_app_messages(h, 4)
    stolen, broken = "test:1", "test:2"
    settled = []
    send = h.c.executors["app_message"]

    def send_then_lose_lease(client, row):
        result = send.send(client, row)
        if row.key == stolen:  # its lease ran out while WeCom answered; another worker took it
            with h.c.sessions.begin() as s:
                s.execute(update(Outbox).where(Outbox.key == stolen).values(claimed_by="other"))
        return result

    def settle(s, row, outcome, now):
        settled.append(row.key)
        OutboxRepo(s, h.clock).add("app_message", f"after:{row.key}", {})  # a domain write of this settle
        if row.key == broken:
            raise RuntimeError("a bug in a settle")

    w = h.c.outbox_worker("w")
    w.executors = {**w.executors, "app_message": Executor("app_message", send_then_lose_lease, send.decide, settle)}
    w.batch = 4
    assert w.run_once() == 4
    rows = {r.key: r for r in outbox(h)}
    assert len(h.backend.app_messages) == 4
    assert {k for k, r in rows.items() if r.status == "done"} == {"test:0", "test:3"}
    assert rows[stolen].status == rows[broken].status == "running" and rows[stolen].claimed_by == "other"
    assert {k for k in rows if k.startswith("after:")} == {"after:test:0", "after:test:3"}  # theirs rolled back
    assert settled == ["test:0", "test:1", "test:2", "test:3"]
