"""The group-QR page (/q/{token}) in a real browser, as a customer who just added a clerk opens it from
the welcome: phone and desktop, JavaScript on and off, under the Content-Security-Policy."""

import pytest

from bot.clock import SystemClock
from bot.sandbox.harness import Harness
from tests.browser.conftest import DESKTOP, PHONE, CspWatch, shot
from tests.conftest import ROOT, STORES

pytestmark = pytest.mark.browser


@pytest.fixture
def qr_page(tmp_path):
    h = Harness(database_url=f"sqlite:///{tmp_path / 'bot.db'}", stores=STORES, clock=SystemClock(),
                calendar_dir=ROOT / "content_calendar", workers=False).start()
    h.sync()
    h.driver.member_adds_clerk("SZ001")
    h.pump()
    (url,) = [a["link"]["url"] for a in h.backend.welcomes[0]["attachments"] if a["msgtype"] == "link"]
    yield h, url
    h.stop()


@pytest.mark.parametrize("js", [True, False], ids=["js", "nojs"])
@pytest.mark.parametrize("size", ["phone", "desktop"])
def test_a_customer_sees_the_group_qr_and_reports_that_it_fails(browser, qr_page, tmp_path, js, size):
    h, url = qr_page
    page = browser.new_context(java_script_enabled=js, **(PHONE if size == "phone" else DESKTOP)).new_page()
    watch = CspWatch(page) if js else None
    page.goto(url)
    assert page.locator("h1").inner_text() == "深圳科技园店福利群"
    qr = page.locator("#qr")
    assert qr.is_visible()
    box = qr.bounding_box()
    width = page.viewport_size["width"]
    assert box["width"] >= 200 and box["x"] >= 0 and box["x"] + box["width"] <= width   # big enough to scan, on screen
    assert page.evaluate("document.getElementById('qr').naturalWidth") > 0              # the image loaded
    shot(page, tmp_path, f"qr-{size}-{'js' if js else 'nojs'}.png")
    page.locator("input[value=full]").check()
    page.locator("#report").click()
    page.wait_for_selector("#thanks")
    assert "小张已收到" in page.locator("#thanks").inner_text()
    assert page.locator("#report").count() == 0
    shot(page, tmp_path, f"qr-{size}-{'js' if js else 'nojs'}-reported.png")
    if watch:
        assert watch.violations() == []
