"""The ops console's broadcast and chain pages in a real browser, at a phone and a desktop viewport, under
the CSP: a slot fired and one paused by ops through the page's own button (a POST with its CSRF token,
the flash after the 303), a chain with sign-ups closed from its page; screenshots kept."""

import re
import secrets

import httpx
import pytest

from bot.clock import SystemClock
from bot.sandbox.harness import Harness
from bot.scheduler import run_slot
from tests.browser.conftest import DESKTOP, PHONE, CspWatch, shot
from tests.browser.test_admin_page import sign_in
from tests.conftest import ROOT, STORES

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    db = tmp_path_factory.mktemp("admin-more") / "bot.db"
    h = Harness(database_url=f"sqlite:///{db}", stores=STORES, clock=SystemClock(),
                calendar_dir=ROOT / "content_calendar", workers=False,
                settings_overrides={"ops_userids": ["ops_lead"], "broadcast": {"reminder_spread_seconds": 0}}).start()
    h.backend.add_member("ops_lead")
    h.sync()
    today = h.clock.now().astimezone(h.cfg.tz).date()
    run_slot(h.c, "10:00", today)                     # whatever the hour: the first slot of today, fired now
    h.pump()
    h.driver.clerk_says("zhangsan", "开团 阳光玫瑰葡萄 39.9元 20份 每人限2 截止明天18:00 取货:周日到店自提")
    h.driver.clerk_says("lisi", "开团 海岸城车厘子 88元 10份 每人限1 截止明天20:00")
    h.pump()
    token = re.search(r"/c/([\w-]+)", [m for m in h.backend.app_messages if m["touser"] == "zhangsan"][-1]
                      ["text"]["content"]).group(1)
    for name, tail in (("王阿姨", "1234"), ("李先生", "5678"), ("陈小姐", "9012")):
        r = httpx.post(f"{h.bot.url}/c/{token}/orders",
                       json={"name": name, "phone_tail": tail, "qty": 1, "request_id": secrets.token_hex(8)})
        assert r.status_code == 201, r.text
    h.pump()
    yield h
    h.stop()


@pytest.mark.parametrize("size", ["phone", "desktop"])
def test_ops_reads_the_broadcasts_and_pauses_a_slot(browser, console, tmp_path, size):
    h = console
    page = browser.new_context(**(PHONE if size == "phone" else DESKTOP)).new_page()
    csp = CspWatch(page)
    sign_in(page, h, "ops_lead")
    page.click("header nav >> text=推送")
    assert page.locator(".slot-row").count() == len(h.cfg.broadcast.slots)
    assert page.locator('.slot-row[data-slot="10:00"] td').nth(1).inner_text() == "6"
    shot(page, tmp_path, f"admin-broadcasts-{size}.png")
    page.click('#slot-1000 .store-row[data-code="SZ002"] a')
    assert page.locator("#slot-1000 .group-row").count() == len(h.groups["SZ002"])
    slot = "20:00" if size == "phone" else "16:00"
    page.click(f"#slot-{slot.replace(':', '')} h2 >> text=暂停")
    flash = page.locator("#flash").inner_text()
    assert f"已暂停 SZ002 的 {slot}" in flash, flash
    shot(page, tmp_path, f"admin-broadcasts-store-{size}.png")
    page.reload()
    assert page.locator("#flash").count() == 0                      # shown once
    page.click(f"#slot-{slot.replace(':', '')} h2 >> text=恢复")
    assert f"已恢复 SZ002 的 {slot}" in page.locator("#flash").inner_text()
    assert csp.violations() == []


@pytest.mark.parametrize("size", ["phone", "desktop"])
def test_ops_reads_the_chains_and_a_chains_orders(browser, console, tmp_path, size):
    h = console
    page = browser.new_context(**(PHONE if size == "phone" else DESKTOP)).new_page()
    csp = CspWatch(page)
    sign_in(page, h, "ops_lead")
    page.click("header nav >> text=团购")
    assert page.locator(".chain-row").count() == 2
    shot(page, tmp_path, f"admin-chains-{size}.png")
    page.click("text=阳光玫瑰葡萄")
    assert page.locator(".order-row").count() == 3
    text = page.locator("#orders").inner_text()
    assert "**34" in text and "1234" not in text and "王**" in text
    shot(page, tmp_path, f"admin-chain-{size}.png")
    assert csp.violations() == []


def test_closing_a_chain_from_its_page(browser, console, tmp_path):
    h = console
    page = browser.new_context(**DESKTOP).new_page()
    sign_in(page, h, "ops_lead")
    page.goto(f"{h.bot.url}/admin/chains")
    page.click("text=海岸城车厘子")
    page.click("#close-chain")
    assert "已截单" in page.locator("#flash").inner_text()
    assert page.locator("#close-chain").count() == 0
    shot(page, tmp_path, "admin-chain-closed-desktop.png")
    h.pump()
    assert any("【备货名单】海岸城车厘子" in (m.get("text") or {}).get("content", "") for m in h.backend.app_messages)


def test_resync_from_the_store_page(browser, console, tmp_path):
    h = console
    page = browser.new_context(**PHONE).new_page()
    csp = CspWatch(page)
    sign_in(page, h, "ops_lead")
    page.goto(f"{h.bot.url}/admin/stores/SZ001")
    page.click("#sync-form button")
    assert "已提交 SZ001 的重新同步" in page.locator("#flash").inner_text()
    h.pump()
    page.reload()
    assert "上次后台同步" in page.locator("#sync-form").inner_text() and "无需修改" in page.locator("#sync-form").inner_text()
    shot(page, tmp_path, "admin-store-synced-phone.png")
    assert csp.violations() == []
