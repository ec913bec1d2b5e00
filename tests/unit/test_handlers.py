"""Handlers alone (STYLE §7): a domain event in, a unit of work on a throwaway SQLite file, a FakeClock;
no sockets, no sandbox. What they leave in the unit of work — outbox rows, facts — is the assertion."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from bot import events as ev
from bot.bootstrap import build_executors, merge_handlers
from bot.clock import SHANGHAI, FakeClock
from bot.commands.handlers import command_router, on_clerk_text
from bot.config import QrHealthSettings
from bot.db.engine import make_engine, make_session_factory
from bot.db.migrate import upgrade
from bot.db.models import FunnelFact, Outbox, Store, Welcome
from bot.funnel import facts
from bot.funnel.findings import QrHealth
from bot.funnel.handlers import on_contact_added_check
from bot.messaging.inbox import EventDispatcher, StoredEvent, WiringError
from bot.messaging.uow import UnitOfWork
from bot.welcome.content import RenderedWelcome
from bot.welcome.handlers import on_contact_added
from bot.funnel.qr_page import QrPages
from bot.links import LinkSigner

AT = datetime(2026, 11, 23, 2, 0, tzinfo=timezone.utc)


QR_PAGES = QrPages("https://bot.example", LinkSigner(["k" * 32], FakeClock(datetime(2026, 11, 23, tzinfo=SHANGHAI))),
                   FakeClock(datetime(2026, 11, 23, tzinfo=SHANGHAI)), 30)


class FakeWelcomeContent:
    def render(self, *, store_code, store_name, clerk, store_benefit=None) -> RenderedWelcome:
        return RenderedWelcome(f"欢迎来到{store_name}", True, [])


@pytest.fixture
def sessions(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'h.db'}")
    upgrade(engine)
    factory = make_session_factory(engine)
    with factory.begin() as s:
        s.add(Store(code="SZ001", name="深圳科技园店", clerks=["zhangsan"]))
    yield factory
    engine.dispose()


@pytest.fixture
def clock():
    return FakeClock(datetime(2026, 11, 23, 10, 0, tzinfo=SHANGHAI))


def run(sessions, clock, handler, evt, **deps):
    with UnitOfWork(sessions, clock) as uow:
        out = handler(evt, uow=uow, stored=StoredEvent(1, AT), **deps)
        uow.commit()
    with sessions() as s:
        return out, list(s.scalars(select(Outbox).order_by(Outbox.id)))


def added(state="SZ001", code="W1") -> ev.ContactAdded:
    return ev.ContactAdded(AT, "zhangsan", "wmA", state, code)


def test_an_add_through_a_store_qr_queues_one_welcome_inside_the_20_second_window(sessions, clock):
    out, rows = run(sessions, clock, on_contact_added, added(), welcome_content=FakeWelcomeContent(), qr_pages=QR_PAGES)
    assert [r.kind for r in rows] == ["send_welcome_msg"]
    assert rows[0].key == "welcome:W1" and rows[0].deadline == AT + timedelta(seconds=20)
    assert rows[0].payload["text"] == "欢迎来到深圳科技园店" and out[0].store_code == "SZ001"


def test_an_add_handled_twice_queues_nothing_more(sessions, clock):
    run(sessions, clock, on_contact_added, added(), welcome_content=FakeWelcomeContent(), qr_pages=QR_PAGES)
    out, rows = run(sessions, clock, on_contact_added, added(), welcome_content=FakeWelcomeContent(), qr_pages=QR_PAGES)
    assert len(rows) == 1 and out[0].reason == "already_recorded"


@pytest.mark.parametrize("evt, reason", [
    (added(code=None), "no_code"),
    (added(state="NOPE"), "unknown_state"),
    (added(state=None), "no_state"),
])
def test_an_add_that_cannot_be_welcomed_is_recorded_with_why(sessions, clock, evt, reason):
    out, rows = run(sessions, clock, on_contact_added, evt, welcome_content=FakeWelcomeContent(), qr_pages=QR_PAGES)
    assert rows == [] and out[0].reason == reason
    with sessions() as s:
        assert s.scalars(select(Welcome.reason)).one() == reason


def test_an_add_is_a_funnel_fact_of_its_store(sessions, clock):
    run(sessions, clock, facts.on_contact_added, added())
    with sessions() as s:
        fact = s.scalars(select(FunnelFact)).one()
    assert (fact.kind, fact.store_code, fact.external_userid) == ("add", "SZ001", "wmA")


def test_a_join_callback_queues_a_group_read_not_a_fact(sessions, clock):
    evt = ev.GroupChatChanged(AT, "wr1", "update", "add_member", join_scene=3, member_ids=("wmA",),
                              cur_mem_ver="v2")
    _, rows = run(sessions, clock, facts.on_group_chat_changed, evt)
    assert [(r.kind, r.key) for r in rows] == [("groupchat_get", "groupchat_get:wr1:v2")]


def test_adds_that_never_join_open_a_stalled_finding_and_alert_the_clerk_once(sessions, clock):
    health = QrHealth(clock, QrHealthSettings(min_adds=3, alpha=0.5, grace_minutes=0))
    for i in range(6):
        with UnitOfWork(sessions, clock) as uow:
            facts.record_fact(uow.session, key=f"add:{i}", kind="add", store_code="SZ001", external_userid=f"wm{i}",
                              at=clock.now() - timedelta(minutes=30 - i))
            uow.commit()
    _, rows = run(sessions, clock, on_contact_added_check, added(), qr_health=health)
    _, again = run(sessions, clock, on_contact_added_check, added(), qr_health=health)
    assert [r.kind for r in rows] == ["app_message"] and rows[0].payload["touser"] == ["zhangsan"]
    assert "二维码异常" in rows[0].payload["content"]["content"] and len(again) == 1


def test_a_clerk_text_is_answered_through_the_outbox(sessions, clock):
    evt = ev.ClerkTextReceived(AT, "zhangsan", "帮助", 42, 1000002)
    _, rows = run(sessions, clock, on_clerk_text, evt, commands=command_router(), command_deps={})
    assert [(r.kind, r.key) for r in rows] == [("app_message", "reply:42")]
    assert "可用命令" in rows[0].payload["content"]["content"]


def test_a_stranger_gets_a_hint_not_silence(sessions, clock):
    evt = ev.ClerkTextReceived(AT, "nobody", "数据", 43, 1000002)
    _, rows = run(sessions, clock, on_clerk_text, evt, commands=command_router(), command_deps={})
    assert "还不是任何门店的店员" in rows[0].payload["content"]["content"]


def test_a_handler_naming_a_dependency_nobody_provides_fails_at_start_up(sessions, clock):
    def wants_typo(evt, uow, qr_healht):
        return []

    with pytest.raises(WiringError, match="qr_healht"):
        EventDispatcher(sessions, clock, {ev.ContactAdded: [wants_typo]}, {"qr_health": object()}, owner="t")


def test_an_executor_factory_naming_a_missing_dependency_fails_at_start_up():
    def factory(sessions, medai):
        raise AssertionError("never called")

    with pytest.raises(WiringError, match="medai"):
        build_executors(({"k": factory},), {"sessions": None, "media": None})


def test_a_kind_with_two_executors_is_refused():
    with pytest.raises(ValueError, match="two executors"):
        build_executors(({"k": lambda: None}, {"k": lambda: None}), {})


def test_handler_maps_merge_in_order():
    a, b, c = (lambda e: []), (lambda e: []), (lambda e: [])
    merged = merge_handlers({ev.ContactAdded: [a]}, {ev.ContactAdded: [b], ev.TagChanged: [c]})
    assert merged == {ev.ContactAdded: [a, b], ev.TagChanged: [c]}


def test_a_command_naming_a_dependency_nobody_provides_fails_at_start_up():
    from bot.commands.router import CommandRouter

    router = CommandRouter()

    @router.command("试试", "try", summary="a command with a typo")
    def typo(args, clerk, brodcaster):
        raise AssertionError("never called")

    with pytest.raises(WiringError, match="brodcaster"):
        router.check({"tz", "chains", "broadcaster", "sidebar_links"})


def test_the_shipped_commands_are_wired():
    command_router().check({"tz", "chains", "broadcaster", "sidebar_links"})
