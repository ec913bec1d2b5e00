"""The chain page in a real browser: headless Chromium (Debian's `chromium`) driven by Playwright,
at a phone viewport, with JavaScript on and off. Skips without Chromium, fails under CI=true."""

import os
import re
import shutil

import pytest

from bot.clock import SystemClock
from bot.sandbox.harness import Harness
from tests.conftest import IN_CI, ROOT, STORES

pytestmark = pytest.mark.browser

CHROMIUM = next((p for p in ("/usr/lib/chromium/chromium", shutil.which("chromium") or "") if p and os.path.exists(p)),
                None)
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True,
         "user_agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
                       "(KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.49 NetType/WIFI Language/zh_CN"}


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if IN_CI:
            pytest.fail("CI=true but playwright is not installed")
        pytest.skip("playwright not installed")
    if CHROMIUM is None:
        if IN_CI:
            pytest.fail("CI=true but Chromium is not installed (apt-get install chromium)")
        pytest.skip("Chromium not installed")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def chain_page(tmp_path):
    h = Harness(database_url=f"sqlite:///{tmp_path / 'bot.db'}", stores=STORES, clock=SystemClock(),
                calendar_dir=ROOT / "content_calendar", workers=False).start()
    h.sync()
    h.driver.clerk_says("zhangsan", "开团 阳光玫瑰葡萄 39.9元 20份 每人限2 截止明天18:00 取货:周日到店自提")
    h.pump()
    reply = [m["text"]["content"] for m in h.backend.app_messages if "已开团" in m["text"]["content"]][-1]
    token = re.search(r"/c/([\w-]+)", reply).group(1)
    yield h, f"{h.bot.url}/c/{token}?g={h.groups['SZ001'][0]}"
    h.stop()


def test_a_member_signs_up_on_a_phone_and_sees_the_list(browser, chain_page, tmp_path):
    h, url = chain_page
    page = browser.new_context(**PHONE).new_page()
    page.goto(url)
    assert page.locator("#title").inner_text() == "阳光玫瑰葡萄"
    assert page.locator("#left").inner_text() == "20"
    assert "还剩" in page.locator("#countdown").inner_text()          # the countdown runs
    page.fill("#name", "王阿姨")
    page.fill("#phone_tail", "1234")
    page.fill("#qty", "2")
    page.click("#submit")
    page.wait_for_url(re.compile(r"mine="))
    assert "你已报名 2 份" in page.content()
    assert page.locator("#left").inner_text() == "18"
    assert page.locator("#orders li").all_inner_texts() == ["王** 尾号**34 ×2"]
    page.screenshot(path=str(tmp_path / "chain-phone.png"), full_page=True)
    assert (tmp_path / "chain-phone.png").stat().st_size > 10_000


def test_what_members_type_is_rendered_inert(browser, chain_page, tmp_path):
    h, url = chain_page
    page = browser.new_context(**PHONE).new_page()
    page.goto(url + "&error=" + "<img src=x onerror=window.__pwned=1>")   # a crafted link in a group
    page.fill("#name", "<script>a()</script>")
    page.fill("#phone_tail", "9876")
    page.click("#submit")
    page.wait_for_url(re.compile(r"mine="))
    assert page.evaluate("window.__pwned") is None
    assert page.locator("#orders script, #orders img, #message img").count() == 0
    assert page.locator("#orders li").first.inner_text().startswith("<**")
    page.screenshot(path=str(tmp_path / "chain-inert.png"), full_page=True)


def test_the_page_works_with_javascript_off(browser, chain_page, tmp_path):
    h, url = chain_page
    page = browser.new_context(java_script_enabled=False, **PHONE).new_page()
    page.goto(url)
    page.fill("#name", "李叔")
    page.fill("#phone_tail", "5678")
    page.click("#submit")                                              # a plain form POST, then 303
    page.wait_for_url(re.compile(r"mine="))
    assert "你已报名 1 份" in page.content()
    assert page.locator("#orders li").all_inner_texts() == ["李* 尾号**78 ×1"]
    page.click("text=取消我的报名")
    assert page.locator("#orders li").count() == 0 and page.locator("#left").inner_text() == "20"
    page.screenshot(path=str(tmp_path / "chain-nojs.png"), full_page=True)
