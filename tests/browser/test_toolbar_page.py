"""The chat-toolbar sidebar `/sidebar` in a real browser under its CSP: the WeCom login through the
sandbox's authorize page, then WeCom's JS-SDK replaced by a stub (its two URLs intercepted, so the page
loads them exactly as in WeCom) whose getContext says `group_chat_tools`, whose getCurExternalChat names
one of the clerk's groups and which records sendChatMessage. Phone and desktop, screenshots kept."""

from __future__ import annotations

import re
from datetime import datetime

import pytest
from sqlalchemy import select

from bot.clock import SHANGHAI, FakeClock
from bot.db.models import SlotDelivery
from bot.sandbox.harness import Harness
from bot.web import WECOM_JS_SDK
from tests.browser.conftest import DESKTOP, PHONE, CspWatch, in_wecom, shot
from tests.conftest import ROOT, STORES
from tests.contract.test_broadcast import at, fire

pytestmark = pytest.mark.browser

def start(tmp_path, stores=STORES) -> Harness:
    clock = FakeClock(datetime(2026, 11, 23, 9, 0, tzinfo=SHANGHAI))
    h = Harness(database_url=f"sqlite:///{tmp_path / 'bot.db'}", stores=stores, clock=clock,
                calendar_dir=ROOT / "content_calendar", workers=False).start()
    h.sync()
    at(h, 10)
    fire(h, "10:00")
    assert h.c.client.access_token          # before the page asks for a jsapi ticket (test_broadcast._warm_token)
    return h


@pytest.fixture
def toolbar(tmp_path):
    h = start(tmp_path)
    yield h
    h.stop()


def sign_in(page, h, userid: str) -> None:
    page.goto(f"{h.bot.url}/sidebar")                    # no session: the console's login, WeCom's OAuth page
    page.wait_for_url(re.compile(r"/connect/oauth2/authorize"))
    page.click(f"#pick-{userid}")
    page.wait_for_url(f"{h.bot.url}/sidebar")


@pytest.mark.parametrize("size", ["phone", "desktop"])
def test_the_toolbar_finds_the_group_shows_its_content_and_one_tap_sends_and_records(browser, toolbar, tmp_path,
                                                                                     size):
    h = toolbar
    chat = h.groups["SZ001"][0]
    context, calls, loaded = in_wecom(browser, PHONE if size == "phone" else DESKTOP, chat)
    page = context.new_page()
    csp = CspWatch(page)
    sign_in(page, h, "zhangsan")
    send = page.locator("#send")
    send.wait_for(state="visible")
    assert "深圳科技园店" in page.locator("#group-name").inner_text()
    assert "小张早安！深圳科技园店今日福利" in page.locator("#card-text").inner_text()
    assert page.locator("#outside").is_hidden()
    shot(page, tmp_path, f"toolbar-{size}.png")
    send.click()
    page.locator("#card-done").wait_for(state="visible")
    assert page.locator("#card-done").inner_text().startswith("✓ 已发送（10:01）")
    assert send.is_hidden()
    assert loaded[:2] == list(WECOM_JS_SDK)
    names = [n for n, _ in calls]
    assert names[:4] == ["config", "agentConfig", "getContext", "getCurExternalChat"] and "sendChatMessage" in names
    assert "getCurExternalChat" in calls[1][1]["jsApiList"]              # agentConfig registers it (the app's identity)
    sent = [a for n, a in calls if n == "sendChatMessage"]
    assert sent[0]["msgtype"] == "text" and "深圳科技园店今日福利" in sent[0]["text"]["content"]
    assert sent[0]["enterChat"] is False
    with h.c.sessions() as s:
        row = s.scalar(select(SlotDelivery).where(SlotDelivery.chat_id == chat, SlotDelivery.slot == "10:00"))
    assert row.status == "sent" and row.tapped_at is not None
    shot(page, tmp_path, f"toolbar-sent-{size}.png")
    page.reload()                                                        # opened again: already sent
    page.locator("#card-done").wait_for(state="visible")
    assert send.is_hidden()
    assert csp.violations() == []


def test_another_stores_group_shows_a_chinese_refusal(browser, toolbar, tmp_path):
    h = toolbar
    context, calls, _ = in_wecom(browser, PHONE, h.groups["SZ002"][0])
    page = context.new_page()
    csp = CspWatch(page)
    sign_in(page, h, "zhangsan")
    page.locator("#message").wait_for(state="visible")
    assert "不属于你负责的门店" in page.locator("#message").inner_text()
    assert page.locator("#card").is_hidden() and "sendChatMessage" not in [n for n, _ in calls]
    shot(page, tmp_path, "toolbar-refused-phone.png")
    assert csp.violations() == []


def test_a_plain_browser_says_where_the_page_opens(browser, toolbar, tmp_path):
    h = toolbar
    page = browser.new_context(**DESKTOP).new_page()
    csp = CspWatch(page)
    page.goto(f"{h.bot.url}/sidebar")
    assert page.locator("#outside").is_visible() and "聊天工具栏" in page.locator("#outside").inner_text()
    assert page.locator("#status").is_hidden()
    shot(page, tmp_path, "toolbar-outside-desktop.png")
    assert csp.violations() == []


def test_markup_in_the_content_stays_text(browser, tmp_path):
    name = '科技园店<img src=x onerror="window.__xss=1">'
    h = start(tmp_path, [{"code": "SZ001", "name": name, "clerks": ["zhangsan"]}])
    try:
        context, _, _ = in_wecom(browser, PHONE, h.groups["SZ001"][0])
        page = context.new_page()
        sign_in(page, h, "zhangsan")
        page.locator("#send").wait_for(state="visible")
        assert name in page.locator("#group-name").inner_text() and name in page.locator("#card-text").inner_text()
        assert page.locator("main img").count() == 0 and page.evaluate("window.__xss") is None
    finally:
        h.stop()


def test_inside_wecom_without_a_ticket_the_page_says_what_failed(browser, toolbar, tmp_path):
    h = toolbar
    context, calls, loaded = in_wecom(browser, PHONE, h.groups["SZ001"][0])
    page = context.new_page()
    csp = CspWatch(page)
    h.backend.inject("get_jsapi_ticket", 48002)
    sign_in(page, h, "zhangsan")
    page.locator("#message").wait_for(state="visible")
    assert "JS-SDK" in page.locator("#message").inner_text() and page.locator("#outside").is_hidden()
    assert loaded == [] and calls == []
    assert csp.violations() == []
