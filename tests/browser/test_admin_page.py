"""The ops console in a real browser: the WeCom login through the sandbox's page, then the dashboard,
a store and the calendar preview at a phone and a desktop viewport, under the CSP, screenshots kept."""

import re

import pytest

from bot.clock import SystemClock
from bot.sandbox.harness import Harness
from tests.browser.conftest import DESKTOP, PHONE, SHOTS, CspWatch, shot
from tests.conftest import ROOT, STORES

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    db = tmp_path_factory.mktemp("admin") / "bot.db"
    h = Harness(database_url=f"sqlite:///{db}", stores=STORES, clock=SystemClock(),
                calendar_dir=ROOT / "content_calendar", workers=False,
                settings_overrides={"ops_userids": ["ops_lead"]}).start()
    h.backend.add_member("ops_lead")
    h.sync()
    for state, adds, joins in (("SZ001", 6, 4), ("SZ002", 3, 1)):
        exts = [h.driver.member_adds_clerk(state).fields["ExternalUserID"] for _ in range(adds)]
        for ext in exts[:joins]:
            h.driver.member_joins_group(state, ext)
    h.driver.clerk_says("zhangsan", "开团 阳光玫瑰葡萄 39.9元 20份 每人限2 截止明天18:00 取货:周日到店自提")
    h.pump()
    yield h
    h.stop()


def sign_in(page, h, userid: str) -> None:
    page.goto(f"{h.bot.url}/admin")                      # no session: to /admin/login, then the WeCom page
    page.wait_for_url(re.compile(r"/wwlogin/sso/login|/connect/oauth2/authorize"))
    assert "企业微信" in page.content()
    page.click(f"#pick-{userid}")
    page.wait_for_url(f"{h.bot.url}/admin")


@pytest.mark.parametrize("size", ["phone", "desktop"])
def test_ops_signs_in_and_reads_the_dashboard(browser, console, tmp_path, size):
    h = console
    page = browser.new_context(**(PHONE if size == "phone" else DESKTOP)).new_page()
    csp = CspWatch(page)
    sign_in(page, h, "ops_lead")
    assert page.locator("#funnel-today .adds").inner_text() == "9"
    assert page.locator("#funnel-today .joined").inner_text() == "5"
    assert page.locator(".store-row").count() == 2
    shot(page, tmp_path, f"admin-dashboard-{size}.png")
    page.click("text=加好友")                            # sort by adds, descending on the second click
    page.click("text=加好友")
    assert page.locator(".store-row").first.get_attribute("data-code") == "SZ001"
    page.click("a[href='/admin/stores/SZ001']")
    assert "深圳科技园店" in page.locator("#store-title").inner_text()
    shot(page, tmp_path, f"admin-store-{size}.png")
    page.goto(f"{h.bot.url}/admin/calendar?store=SZ001")
    assert page.locator(".msg.slot").count() > 0
    shot(page, tmp_path, f"admin-calendar-{size}.png")
    page.screenshot(path=str(SHOTS / f"admin-calendar-{size}-first-screen.png"))   # what one sees first
    assert csp.violations() == []


def test_a_clerk_sees_only_their_store(browser, console, tmp_path):
    h = console
    page = browser.new_context(**PHONE).new_page()
    sign_in(page, h, "zhangsan")
    assert [page.locator(".store-row").nth(i).get_attribute("data-code")
            for i in range(page.locator(".store-row").count())] == ["SZ001"]
    page.click("text=退出")
    assert "已退出" in page.content()
    page.goto(f"{h.bot.url}/admin")
    page.wait_for_url(re.compile(r"/wwlogin/sso/login"))
