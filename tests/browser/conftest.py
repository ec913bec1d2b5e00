"""Headless Chromium (Debian's `chromium`) driven by Playwright. Skips without Chromium, fails under
CI=true. Screenshots go to the test's tmp dir and to /tmp/shots/ for a person to look at."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from bot.web import WECOM_JS_SDK
from tests.conftest import IN_CI

CHROMIUM = next((p for p in ("/usr/lib/chromium/chromium", shutil.which("chromium") or "") if p and os.path.exists(p)),
                None)
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True,
         "user_agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
                       "(KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.49 NetType/WIFI Language/zh_CN"}
DESKTOP = {"viewport": {"width": 1280, "height": 800}}
SHOTS = Path("/tmp/shots")

# Every CSP violation the page raises, and the console's CSP complaints: the pages must raise none.
WATCH_CSP = """
window.__csp = [];
document.addEventListener('securitypolicyviolation', function (e) {
  window.__csp.push(e.violatedDirective + ' ' + e.blockedURI);
});
"""


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


class CspWatch:
    def __init__(self, page):
        self.page = page
        self.console: list[str] = []
        page.add_init_script(WATCH_CSP)
        page.on("console", lambda m: self.console.append(m.text) if "Content Security Policy" in m.text else None)

    def violations(self) -> list[str]:
        return list(self.page.evaluate("window.__csp || []")) + self.console


def shot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    SHOTS.mkdir(exist_ok=True)
    shutil.copy(path, SHOTS / name)
    return path


# WeCom's JS-SDK inside the WeCom app, simulated: the page's scripts run as they would there, each call
# is recorded, and the chat toolbar is open in the group `chat`.
WXWORK = " wxwork/4.1.22 MicroMessenger/7.0.1"
STUB_SDK = """
window.wx = {
  config: function (o) { window.recordWx('config', o); },
  ready: function (cb) { setTimeout(cb, 0); },
  agentConfig: function (o) { window.recordWx('agentConfig', o); o.success(); },
  invoke: function (name, args, cb) {
    window.recordWx(name, args);
    if (name === 'getContext') cb({err_msg: 'getContext:ok', entry: 'group_chat_tools'});
    else if (name === 'getCurExternalChat') cb({err_msg: 'getCurExternalChat:ok', chatId: %s});
    else cb({err_msg: name + ':ok'});
  }
};
"""


def in_wecom(browser, device: dict, chat: str):
    """A browser context that looks like the WeCom app with the toolbar open in `chat`: the context,
    the recorded JS-SDK calls, and the SDK files the page loaded."""
    context = browser.new_context(**{**device, "user_agent": (device.get("user_agent") or "Mozilla/5.0") + WXWORK})
    calls: list[tuple[str, dict]] = []
    context.expose_function("recordWx", lambda name, args: calls.append((name, args)))
    loaded: list[str] = []

    def sdk(route):
        loaded.append(route.request.url)
        body = STUB_SDK % json.dumps(chat) if "jweixin" in route.request.url else "/* agentConfig: in the stub */"
        route.fulfill(status=200, content_type="text/javascript", body=body)

    for src in WECOM_JS_SDK:
        context.route(src, sdk)
    return context, calls, loaded
