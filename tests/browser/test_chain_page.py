"""The chain page in a real browser: headless Chromium (Debian's `chromium`) driven by Playwright,
at a phone viewport, with JavaScript on and off, under the page's Content-Security-Policy."""

import re

import pytest

from bot.clock import SystemClock
from bot.sandbox.harness import Harness
from tests.browser.conftest import DESKTOP, PHONE, CspWatch, shot
from tests.conftest import ROOT, STORES

pytestmark = pytest.mark.browser


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


@pytest.mark.parametrize("size", ["phone", "desktop"])
def test_with_javascript_a_member_signs_up_and_cancels_under_the_csp(browser, chain_page, tmp_path, size):
    h, url = chain_page
    context = browser.new_context(**(PHONE if size == "phone" else DESKTOP))
    page = context.new_page()
    csp = CspWatch(page)
    page.goto(url)
    assert "还剩" in page.locator("#countdown").inner_text()          # /static/chain.js ran
    page.fill("#name", "王阿姨")
    page.fill("#phone_tail", "1234")
    page.fill("#qty", "2")
    with page.expect_request(lambda r: r.method == "POST" and r.url.endswith(url.split("/c/")[1].split("?")[0]
                                                                            + "/orders?g=" + url.split("g=")[1])):
        page.click("#submit")                                          # by fetch, not a form post
    page.wait_for_url(re.compile(r"mine="))
    assert page.locator("#message").inner_text() == "报名成功！" and page.locator("#left").inner_text() == "18"
    shot(page, tmp_path, f"chain-signed-up-{size}.png")
    page.click("text=取消我的报名")
    page.wait_for_url(re.compile(r"error=cancelled"))
    assert page.locator("#message").inner_text() == "已取消报名。"
    assert page.locator("#orders li").count() == 0 and page.locator("#left").inner_text() == "20"
    assert csp.violations() == []


def test_a_refused_sign_up_is_told_in_place_without_putting_words_in_the_url(browser, chain_page, tmp_path):
    h, url = chain_page
    page = browser.new_context(**PHONE).new_page()
    csp = CspWatch(page)
    for qty in ("2", "1"):                                             # the second is over the limit of 2
        page.goto(url)
        page.fill("#name", "李叔")
        page.fill("#phone_tail", "5678")
        page.fill("#qty", qty)
        page.click("#submit")
        if qty == "2":
            page.wait_for_url(re.compile(r"mine="))
    message = page.locator("#message.err")
    message.wait_for()
    assert "每人限购 2 份" in message.inner_text() and "error=" not in page.url
    assert page.locator("#submit").is_enabled()                      # they can change the number and retry
    shot(page, tmp_path, "chain-refused-phone.png")
    assert csp.violations() == []


def test_the_csp_watch_sees_a_violation(browser, chain_page):
    """The watch above is not blind: an inline script, which the CSP forbids, is seen as a violation."""
    h, url = chain_page
    page = browser.new_context(**PHONE).new_page()
    csp = CspWatch(page)
    page.goto(url)
    page.evaluate("""() => { const s = document.createElement('script'); s.textContent = 'window.__ran = 1';
                             document.body.appendChild(s); }""")
    page.wait_for_function("window.__csp.length > 0")
    assert page.evaluate("window.__ran") is None and any("script-src" in v for v in csp.violations())
