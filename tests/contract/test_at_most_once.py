"""Nothing twice at WeCom (issue 12, items 1, 3, 6): lost answers, lapsed leases, dead processes,
WeCom's duplicate check and per-member limits, all through the sandbox on both databases."""

from __future__ import annotations

import os
import threading
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from bot.db.models import BroadcastTask, Outbox, WorkerProcess
from bot.messaging.claims import claim_due
from bot.sandbox.harness import Harness
from bot.wecom import errcodes
from bot.wecom.client import WeComClient, WeComError
from tests.conftest import ROOT, STORES
from tests.contract.helpers import count, outbox
from tests.contract.test_broadcast import at, fire, templates
from tests.contract.test_outbox import queue_app_messages


def rows(h, kind: str) -> list[Outbox]:
    return [r for r in outbox(h) if r.kind == kind]


def delivered_to(h, userid: str) -> list[dict]:
    return [m for m in h.backend.app_messages if m["touser"] == userid and not m["dropped"]]


# -- item 1: a lost answer is reconciled, never resent blind ------------------------------------

@pytest.mark.parametrize("fault", ["drop", "late"])
def test_a_lost_answer_to_add_msg_template_produces_one_template(synced, fault):
    h = synced
    h.backend.rules.late_answer_seconds = 1.5
    h.c.client.timeout = 1.0                      # the client gives up before a `late` answer comes
    at(h, 10)
    h.backend.inject_fault("externalcontact/add_msg_template", fault, times=1)
    fire(h, "10:00")
    h.clock.advance(600)                          # past the unknown row's back-off
    h.pump()
    mass = rows(h, "add_msg_template")
    assert mass and all(r.status == "done" for r in mass)
    senders = [t["creator"] for t in templates(h)]
    assert len(senders) == len(set(senders)) == len(mass)     # one template per sender, none twice
    (adopted,) = [r for r in mass if r.result.get("adopted")]
    assert adopted.uncertain and adopted.attempts == 2
    with h.c.sessions() as s:                     # and the task knows its msgid: the slot goes on
        task = s.scalars(select(BroadcastTask).where(BroadcastTask.sender == adopted.payload["sender"])).one()
    assert task.msgid == adopted.result["msgid"] and task.status == "awaiting"


def test_the_client_does_not_resend_a_write_once_call_after_a_lost_answer(harness):
    h = harness
    h.backend.inject_fault("externalcontact/add_contact_way", "drop")
    with pytest.raises(WeComError) as e:
        h.c.client.external_contact.add_contact_way(type=1, scene=2, user=["zhangsan"], state="X1")
    assert e.value.errcode == errcodes.UNKNOWN_OUTCOME
    assert h.backend.calls["externalcontact/add_contact_way"] == 1 and len(h.backend.contact_ways) == 1


def test_a_write_once_call_is_retried_when_it_never_left(harness):
    h = harness
    c = h.c.client
    dead = WeComClient(c.corp_id, c.secret, agent_id=1, api_base_url="http://127.0.0.1:9/cgi-bin/",
                       clock=h.clock, timeout=0.5, max_attempts=3, token_store=c.tokens)
    dead.tokens.get(dead.access_token_key, lambda: ("t", 7200))
    with pytest.raises(WeComError) as e:         # refused: nothing reached WeCom, so retried, then reported
        dead.external_contact.add_contact_way(type=1, scene=2, user=["zhangsan"], state="X1")
    assert e.value.errcode == errcodes.NETWORK_ERROR and "3 attempts" in e.value.errmsg


def test_idempotent_calls_are_resent_after_a_lost_answer(synced):
    h = synced
    h.backend.inject_fault("externalcontact/groupchat/get", "drop")
    chat = h.groups["SZ001"][0]
    before = h.backend.calls["externalcontact/groupchat/get"]
    assert h.c.client.external_contact_group_chat.get(chat)["chat_id"] == chat
    assert h.backend.calls["externalcontact/groupchat/get"] == before + 2


def test_a_reminder_whose_answer_was_lost_is_counted_and_not_repeated(synced):
    h = synced
    at(h, 10)
    fire(h, "10:00")
    msgid = next(t["msgid"] for t in templates(h))
    with h.c.sessions.begin() as s:
        from bot.messaging.outbox import OutboxRepo
        OutboxRepo(s, h.clock).add("remind_groupmsg_send", f"remind:{msgid}:1", {"msgid": msgid})
    h.backend.inject_fault("externalcontact/remind_groupmsg_send", "drop")
    h.pump()
    h.clock.advance(600)
    h.pump()
    (row,) = rows(h, "remind_groupmsg_send")
    assert row.status == "done" and row.result == {"assumed": True}
    assert len(h.backend.templates[msgid]["reminds"]) == 1           # WeCom reminded once
    with h.c.sessions() as s:
        assert len(s.scalars(select(BroadcastTask).where(BroadcastTask.msgid == msgid)).one().reminds) == 1


# -- leases: a worker that lost its lease never calls ----------------------------------------

def test_a_lease_that_lapses_mid_batch_never_yields_a_second_call(harness):
    h = harness
    queue_app_messages(h, 4)
    a, b = h.c.outbox_worker("A"), h.c.outbox_worker("B")
    paused, go = threading.Event(), threading.Event()
    real_send = a.executors["app_message"].send

    def slow_send(client, row):                    # A stalls after its first row (a GC pause, a slow disk)
        out = real_send(client, row)
        paused.set()
        go.wait(10)
        return out
    a.executors = {**a.executors, "app_message": type(a.executors["app_message"])(
        "app_message", slow_send, a.executors["app_message"].decide, a.executors["app_message"].settle)}
    t = threading.Thread(target=a.run_once)
    t.start()
    assert paused.wait(10)
    h.clock.advance(h.c.settings.worker.lease_seconds + 1)   # A's leases lapse; nobody renewed them
    assert b.run_once() == 4                        # B takes all four back (the first one uncertain)
    go.set()
    t.join(10)
    texts = [m["text"]["content"] for m in h.backend.app_messages if not m["dropped"]]
    assert sorted(texts) == [f"消息 {i}" for i in range(4)]   # each once: A sent nothing after it lost them
    assert h.backend.calls["message/send"] == 5     # B's resend of the first was dropped by the duplicate check
    assert count(h, Outbox, status="done") == 4


def test_the_heartbeat_renews_leases_and_drops_rows_taken_by_others(harness):
    h = harness
    queue_app_messages(h, 2)
    w = h.c.outbox_worker("A")
    with h.c.sessions.begin() as s:
        claimed = claim_due(s, Outbox, now=h.clock.now(), owner=w.owner, limit=2, lease=w.lease)
    w.book.hold(Outbox, w.owner, claimed)
    with h.c.sessions.begin() as s:                 # another worker took the second one meanwhile
        s.execute(update(Outbox).where(Outbox.id == claimed[1].id).values(claimed_by="elsewhere/B"))
    from bot.messaging.heartbeat import Heartbeat
    hb = Heartbeat(h.c.sessions, h.clock, w.book, role="worker", lease_seconds=30)
    h.clock.advance(20)
    hb.beat()
    assert w.lease_left(claimed[0]) == pytest.approx(30, abs=0.01)
    assert w.lease_left(claimed[1]) == 0


@pytest.mark.pg
def test_the_heartbeat_skips_a_row_being_settled_instead_of_waiting_for_it(pg_url, clock):
    """PostgreSQL (SQLite has one writer at a time): a settle holds row locks while its batch commits. A beat
    that waited for them deadlocked under a slot (the two lock rows in different orders) and, aborted,
    renewed no lease at all."""
    with Harness(database_url=pg_url, stores=STORES, clock=clock, calendar_dir=ROOT / "content_calendar",
                 workers=False) as h:
        _beat_beside_a_settle(h)


def _beat_beside_a_settle(h) -> None:
    queue_app_messages(h, 2)
    w = h.c.outbox_worker("A")
    with h.c.sessions.begin() as s:
        claimed = claim_due(s, Outbox, now=h.clock.now(), owner=w.owner, limit=2, lease=w.lease)
    w.book.hold(Outbox, w.owner, claimed)
    from bot.messaging.heartbeat import Heartbeat
    hb = Heartbeat(h.c.sessions, h.clock, w.book, role="worker", lease_seconds=30)
    h.clock.advance(20)
    settling = h.c.sessions()
    settling.begin()
    settling.execute(update(Outbox).where(Outbox.id == claimed[1].id).values(last_error="being settled"))
    try:
        beat = threading.Thread(target=hb.beat)
        beat.start()
        beat.join(5)
        assert not beat.is_alive(), "the beat waited for the settle's lock"
    finally:
        settling.rollback()
        settling.close()
    assert w.lease_left(claimed[0]) == pytest.approx(30, abs=0.01)   # renewed
    assert w.lease_left(claimed[1]) == pytest.approx(10, abs=0.01)   # skipped, still held: not lost


# -- item 6: a dead process's claims come back at once --------------------------------------

def _other_process(h, pid: int, beat_ago: float, owner_rows: int = 10) -> str:
    """A worker_process row of this host with `pid`, its last beat `beat_ago` s ago, holding the due rows."""
    from bot.messaging.heartbeat import HOST
    other = f"{HOST[:24]}:{pid}:abcdef"
    with h.c.sessions.begin() as s:
        s.add(WorkerProcess(id=other, host=HOST, pid=pid, role="all", started_at=h.clock.now(),
                            beat_at=h.clock.now() - timedelta(seconds=beat_ago)))
        claim_due(s, Outbox, now=h.clock.now(), owner=f"{other}/outbox-0", limit=owner_rows,
                  lease=timedelta(seconds=30))
    return other


def test_a_restart_takes_back_at_once_what_a_killed_run_of_this_host_held(synced):
    h = synced
    h.driver.member_adds_clerk("SZ001")
    h.c.dispatcher("d").run_once()                  # the welcome row is queued
    dead = _other_process(h, 2 ** 22 + 17, beat_ago=10)   # no such pid here, silent for 5 beats
    assert [r.status for r in rows(h, "send_welcome_msg")] == ["running"]
    h.restart_bot()
    h.with_workers = True
    h.c.start_workers()                             # no waiting for the lease: it is certainly gone
    assert h.wait_for(lambda: [r.status for r in rows(h, "send_welcome_msg")] == ["done"], timeout=5)
    assert len(h.backend.welcomes) == 1
    (row,) = rows(h, "send_welcome_msg")
    assert row.uncertain
    with h.c.sessions() as s:
        assert s.get(WorkerProcess, dead) is None


@pytest.mark.parametrize("why", ["same pid as ours (a sibling container)", "still beating"])
def test_a_live_process_that_only_looks_like_a_dead_one_keeps_its_rows(synced, why):
    h = synced
    h.driver.member_adds_clerk("SZ001")
    h.c.dispatcher("d").run_once()
    if why.startswith("same pid"):
        other = _other_process(h, os.getpid(), beat_ago=0)     # pid 1 in every pod: not proof of death
    else:
        other = _other_process(h, 2 ** 22 + 17, beat_ago=1)    # pid unseen here, but it beats
    from bot.messaging.heartbeat import Heartbeat
    hb = Heartbeat(h.c.sessions, h.clock, h.c.leases, role="worker", lease_seconds=30)
    hb.beat()
    (row,) = rows(h, "send_welcome_msg")
    assert row.status == "running" and row.claimed_by.startswith(other) and not row.uncertain
    with h.c.sessions() as s:
        assert s.get(WorkerProcess, other) is not None


def test_a_welcome_is_leased_no_longer_than_its_window(synced):
    h = synced
    h.driver.member_adds_clerk("SZ001")
    h.c.dispatcher("d").run_once()
    with h.c.sessions.begin() as s:
        (row,) = claim_due(s, Outbox, now=h.clock.now(), owner="x/y", limit=1, lease=timedelta(seconds=300))
    assert row.lease_until <= row.deadline
    assert row.lease_until <= h.clock.now() + timedelta(seconds=12.01)


# -- item 3: app messages ------------------------------------------------------------------

def test_a_clerks_identical_question_twice_gets_two_answers(synced):
    h = synced
    for _ in range(2):
        h.driver.clerk_says("zhangsan", "帮助")
        h.clock.advance(5)
        h.pump()
    replies = delivered_to(h, "zhangsan")
    assert len(replies) == 2
    assert replies[0]["text"]["content"] != replies[1]["text"]["content"]      # WeCom would drop the same JSON
    assert replies[1]["text"]["content"].endswith("（09:00:10）")


def test_a_resent_app_message_after_a_lost_answer_reaches_the_clerk_once(synced):
    h = synced
    h.backend.inject_fault("message/send", "drop")
    h.driver.clerk_says("zhangsan", "帮助")
    h.pump()
    assert h.backend.calls["message/send"] == 2
    assert len(delivered_to(h, "zhangsan")) == 1
    assert [m["dropped"] for m in h.backend.app_messages] == [None, "duplicate"]


def test_per_member_limits_hold_messages_back_instead_of_losing_them(harness):
    h = harness
    queue_app_messages(h, 40)
    h.pump()
    assert len(delivered_to(h, "zhangsan")) == 30 and count(h, Outbox, status="pending") == 10
    assert not [m for m in h.backend.app_messages if m["dropped"]]    # WeCom had nothing to drop
    h.clock.advance(61)
    h.pump()
    assert len(delivered_to(h, "zhangsan")) == 40 and count(h, Outbox, status="done") == 40
    assert all(r.attempts == 1 for r in outbox(h))   # held back is not an attempt


def test_an_uncertain_app_message_past_the_duplicate_window_is_not_resent(harness):
    h = harness
    queue_app_messages(h, 1)
    with h.c.sessions.begin() as s:
        s.execute(update(Outbox).values(uncertain=True, status="unknown"))
    h.clock.advance(1800)
    h.pump()
    (row,) = outbox(h)
    assert row.status == "dead" and row.last_errcode == errcodes.UNKNOWN_OUTCOME
    assert h.backend.calls["message/send"] == 0


def test_sandbox_dismissed_group_answers_its_errcode(synced):
    h = synced
    chat = h.groups["SZ001"][0]
    h.backend.dismiss_group(chat)
    with pytest.raises(WeComError) as e:
        h.c.client.external_contact_group_chat.get(chat)
    assert e.value.errcode == errcodes.INVALID_CHAT_ID


def test_sync_adopts_a_contact_way_whose_answer_was_lost(harness):
    h = harness
    h.backend.inject_fault("externalcontact/add_contact_way", "drop")
    report = h.sync()
    assert not report.failed, report.summary()
    states = [w["state"] for w in h.backend.contact_ways.values()]
    assert sorted(states) == sorted(st.code for st in h.cfg.stores)      # one per store: none made twice
    with h.c.sessions() as s:
        from bot.db.models import Store
        ids = {st.contact_way_config_id for st in s.scalars(select(Store))}
    assert ids == set(h.backend.contact_ways)


def test_sync_says_so_when_a_join_ways_answer_was_lost(harness):
    h = harness
    h.backend.inject_fault("externalcontact/groupchat/add_join_way", "drop")
    report = h.sync()
    assert not report.failed, report.summary()
    assert any("stray" in c for r in report.results for c in r.changes)
    assert len(h.backend.join_ways) == len(h.cfg.stores) + 1             # WeCom lists none: it cannot be found


def test_recipients_wecom_refuses_are_recorded_and_counted(harness):
    h = harness
    with h.c.sessions.begin() as s:
        from bot.messaging.outbox import OutboxRepo
        OutboxRepo(s, h.clock).add("app_message", "t:refused", {"touser": ["zhangsan", "left_last_year"],
                                                                "msgtype": "text", "content": {"content": "你好"}})
    h.pump()
    (row,) = outbox(h)
    assert row.status == "done" and row.result["invaliduser"] == ["left_last_year"]
    from prometheus_client import generate_latest
    assert "wecom_app_message_refused_total 1.0" in generate_latest(h.c.metrics.registry).decode()


def test_a_welcome_claimed_with_5s_of_its_window_left_still_gets_its_try(synced):
    h = synced
    h.driver.member_adds_clerk("SZ001")
    h.c.dispatcher("d").run_once()
    h.clock.advance(15)                              # a backlog ate 15 of the 20 seconds
    h.pump()
    (row,) = rows(h, "send_welcome_msg")
    assert row.status == "done" and len(h.backend.welcomes) == 1
    assert h.backend.calls["externalcontact/send_welcome_msg"] == 1


def test_an_uncertain_mass_message_past_its_deadline_is_asked_about_not_replaced_by_a_reminder(synced):
    h = synced
    at(h, 10)
    h.backend.inject_fault("externalcontact/add_msg_template", "drop", times=10)
    fire(h, "10:00")
    h.clock.advance(86400)                        # far past the day's deadline before any retry
    h.pump()
    mass = rows(h, "add_msg_template")
    assert mass and all(r.status == "done" and r.result.get("adopted") for r in mass)
    assert not [r for r in outbox(h) if r.key.startswith("rm2:")]      # no fallback reminder on top
    senders = [t["creator"] for t in templates(h)]
    assert len(senders) == len(set(senders)) == len(mass)


def test_an_uncertain_mass_message_wecom_cannot_be_asked_about_is_not_sent_twice_either(synced):
    h = synced
    at(h, 10)
    h.backend.inject_fault("externalcontact/add_msg_template", "drop", times=10)
    fire(h, "10:00")
    h.clock.advance(86400)
    h.backend.inject("externalcontact/get_groupmsg_list_v2", 48002, times=100)   # no permission to ask
    h.pump()
    mass = rows(h, "add_msg_template")
    assert mass and all(r.status == "dead" and r.last_errcode == errcodes.UNKNOWN_OUTCOME for r in mass)
    assert not [r for r in outbox(h) if r.key.startswith("rm2:")]
    assert len(templates(h)) == len(mass)                              # each created once, none again


def test_a_welcome_whose_answer_was_lost_is_not_recorded_expired(synced):
    h = synced
    h.c.client.max_attempts = 1                      # the one attempt is delivered, its answer lost
    h.backend.inject_fault("externalcontact/send_welcome_msg", "drop")
    h.driver.member_adds_clerk("SZ001")
    h.c.dispatcher("d").run_once()
    h.c.outbox_worker("w").run_once()
    (row,) = rows(h, "send_welcome_msg")
    assert row.status == "pending" and row.uncertain  # resendable, and marked: WeCom may have it
    h.clock.advance(25)                               # the window closes before the retry
    h.pump()
    from tests.contract.helpers import welcomes
    (w,) = welcomes(h)
    assert len(h.backend.welcomes) == 1 and w.status == "unknown"    # delivered, so not "expired"
