"""The sidebar page in a real browser under its CSP, with WeCom's JS-SDK replaced by a stub: the
SDK's two URLs are intercepted, so the page loads them exactly as in WeCom, and the stub `wx`
answers getCurExternalChat with one of the clerk's groups and records sendChatMessage."""

from __future__ import annotations

import re
from datetime import datetime

import httpx
import pytest
from sqlalchemy import select

from bot.clock import SHANGHAI, FakeClock
from bot.db.models import SlotDelivery
from bot.sandbox.harness import Harness
from bot.web import WECOM_JS_SDK
from tests.browser.conftest import DESKTOP, PHONE, CspWatch, in_wecom, shot
from tests.conftest import ROOT, STORES
from tests.contract.test_broadcast import at, fire, reminders_to

pytestmark = pytest.mark.browser

@pytest.fixture
def sidebar(tmp_path):
    clock = FakeClock(datetime(2026, 11, 23, 9, 0, tzinfo=SHANGHAI))
    h = Harness(database_url=f"sqlite:///{tmp_path / 'bot.db'}", stores=STORES, clock=clock,
                calendar_dir=ROOT / "content_calendar", workers=False).start()
    h.sync()
    at(h, 10)
    fire(h, "10:00")
    assert h.c.client.access_token          # before the page asks for a jsapi ticket (test_broadcast._warm_token)
    yield h, reminders_to(h, "zhangsan")[0]["textcard"]["url"]
    h.stop()


@pytest.mark.parametrize("size", ["phone", "desktop"])
def test_one_tap_sends_the_groups_content_and_records_the_tap_under_the_csp(browser, sidebar, tmp_path, size):
    h, url = sidebar
    chats = re.findall(r'<section class="card" data-chat="([^"]+)"', httpx.get(url).text)
    chat = chats[0]
    device = PHONE if size == "phone" else DESKTOP
    context, calls, loaded = in_wecom(browser, device, chat)
    page = context.new_page()
    csp = CspWatch(page)
    page.goto(url)
    send = page.locator(f'button.send[data-chat="{chat}"]')
    send.wait_for(state="visible")                                    # shown only for the chat the toolbar is in
    assert page.locator("button.send:visible").count() == 1
    assert page.locator(f'.card.current[data-chat="{chat}"]').count() == 1
    shot(page, tmp_path, f"sidebar-{size}.png")
    with page.expect_navigation():                                    # the tap is recorded, then the page reloads
        send.click()
    assert loaded[:2] == list(WECOM_JS_SDK)                           # exactly the URLs the CSP allows, in order
    names = [n for n, _ in calls]
    assert names[:3] == ["config", "agentConfig", "getCurExternalChat"] and "sendChatMessage" in names
    sent = [a for n, a in calls if n == "sendChatMessage"]
    assert sent[0]["msgtype"] == "text" and sent[0]["text"]["content"] and sent[0]["enterChat"] is False
    with h.c.sessions() as s:
        row = s.scalar(select(SlotDelivery).where(SlotDelivery.chat_id == chat, SlotDelivery.slot == "10:00"))
    assert row.status == "sent" and row.tapped_at is not None
    assert page.locator(f'.card[data-chat="{chat}"] .done').inner_text().startswith("✓ 已发送")
    shot(page, tmp_path, f"sidebar-sent-{size}.png")
    assert csp.violations() == []


def test_outside_wecom_the_sidebar_works_by_hand_under_the_csp(browser, sidebar, tmp_path):
    h, url = sidebar
    page = browser.new_context(**PHONE).new_page()
    csp = CspWatch(page)
    page.goto(url)
    assert page.locator("button.send:visible").count() == 0           # no SDK: the 已发送 forms do the job
    page.locator("form button.secondary").first.click()
    page.wait_for_url(re.compile(r"done="))
    assert page.locator(".done").count() == 1
    assert csp.violations() == []
