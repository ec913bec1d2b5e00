"""The chat-toolbar sidebar `GET /sidebar` over HTTP: no signature, WeCom OAuth through the sandbox's
authorize page (redirects followed by hand), then the JSON of the group the JS-SDK names: the slot's
content for a group of the member's stores, refused for another store's, the tap recorded once and
counted by the report and `今日`, CSRF required, content never turned into markup."""

from __future__ import annotations

import html
import json
import re
from datetime import date
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import pytest
from sqlalchemy import select

from bot.broadcast.report import slot_figures
from bot.db.engine import reads_of
from bot.db.models import SlotDelivery
from bot.sandbox.harness import Harness
from tests.conftest import ROOT, STORES
from tests.contract.test_broadcast import MONDAY, _signature, at, deliveries, fire

WXWORK_UA = "Mozilla/5.0 (iPhone) AppleWebKit/605.1.15 Mobile/15E148 wxwork/4.1.30 MicroMessenger/7.0.1"
DESKTOP_UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120 Safari/537.36"


def harness(db_url, clock, stores=STORES) -> Harness:
    h = Harness(database_url=db_url, stores=stores, clock=clock, calendar_dir=ROOT / "content_calendar",
                workers=False, settings_overrides={"ops_userids": ["ops_lead"]})
    h.start()
    h.backend.add_member("ops_lead")
    report = h.sync()
    assert not report.failed, report.summary()
    assert h.c.client.access_token      # before a page fetches a jsapi ticket (test_broadcast._warm_token)
    return h


@pytest.fixture
def h(db_url, clock):
    h = harness(db_url, clock)
    yield h
    h.stop()


def sign_in(h, userid: str) -> httpx.Client:
    """Open /sidebar in WeCom without a session: to the ops console's login, WeCom's OAuth (the
    sandbox's authorize page), pick the member, and back to /sidebar."""
    http = httpx.Client(base_url=h.bot.url, headers={"user-agent": WXWORK_UA})
    r = http.get("/sidebar")
    assert r.status_code == 303 and unquote(r.headers["location"]) == "/admin/login?next=/sidebar"
    r = http.get(r.headers["location"])
    assert r.status_code == 302
    authorize = r.headers["location"]
    page = httpx.get(authorize.split("#")[0])
    href = html.unescape(re.search(rf'id="pick-{re.escape(userid)}" href="([^"]+)"', page.text).group(1))
    back = httpx.get(h.sandbox.url + href)
    assert back.status_code == 302
    r = http.get(back.headers["location"])
    assert r.status_code == 303 and r.headers["location"] == "/sidebar", r.text
    return http


def csrf_of(page: str) -> str:
    return re.search(r'data-csrf="([^"]+)"', page).group(1)


def group(http: httpx.Client, chat_id: str) -> httpx.Response:
    return http.get("/sidebar/group", params={"chat_id": chat_id})


def tap(http: httpx.Client, csrf: str | None, **body) -> httpx.Response:
    headers = {"X-CSRF-Token": csrf} if csrf is not None else {}
    return http.post("/sidebar/group/sent", json=body, headers=headers)


def test_without_a_session_wecom_oauth_signs_in_and_comes_back_to_the_sidebar(h):
    http = httpx.Client(base_url=h.bot.url, headers={"user-agent": WXWORK_UA})
    login = http.get(http.get("/sidebar").headers["location"])
    o = urlsplit(login.headers["location"])
    q = parse_qs(o.query)
    assert o.path == "/connect/oauth2/authorize" and login.headers["location"].endswith("#wechat_redirect")
    assert q["scope"] == ["snsapi_base"] and q["appid"] == [h.corp.corp_id] and q["agentid"] == [str(h.corp.agent_id)]
    assert q["redirect_uri"] == [f"{h.cfg.public_base_url}/admin/auth"]

    http = sign_in(h, "zhangsan")
    session = [ck for ck in http.cookies.jar if ck.name == "wb_admin"][0]
    assert session.path == "/" and session.has_nonstandard_attr("HttpOnly")
    page = http.get("/sidebar")
    assert page.status_code == 200 and "本群内容" in page.text and csrf_of(page.text)
    assert "jwxwork-1.0.0.js" in page.text and "getCurExternalChat" not in page.text   # the logic is /static
    js = json.loads(re.search(r'<script id="jsapi" type="application/json">(.*?)</script>', page.text).group(1))
    tickets = h.backend.state()["tickets"]
    url = f"{h.cfg.public_base_url}/sidebar"                       # what the webview signs: the page's URL
    assert js["signature"] == _signature(tickets["corp"], js["nonceStr"], js["timestamp"], url)
    assert js["agentSignature"] == _signature(tickets["agent_config"], js["nonceStr"], js["timestamp"], url)
    assert "frame-ancestors 'self' https://work.weixin.qq.com" in page.headers["content-security-policy"]
    # and the console still works with the same session
    assert http.get("/admin").status_code == 200


def test_a_plain_browser_gets_a_chinese_note_and_no_login(h):
    r = httpx.get(f"{h.bot.url}/sidebar", headers={"user-agent": DESKTOP_UA})
    assert r.status_code == 200 and "请在企业微信里打开本页" in r.text and "聊天工具栏" in r.text
    assert 'data-csrf=""' in r.text and "jweixin" not in r.text
    assert httpx.get(f"{h.bot.url}/sidebar/group", params={"chat_id": h.groups["SZ001"][0]}).status_code == 401


def test_the_clerks_group_gets_the_current_slots_content(h):
    at(h, 10)
    fire(h, "10:00")
    http = sign_in(h, "zhangsan")
    chat = h.groups["SZ001"][0]
    r = group(http, chat)
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    data = r.json()
    assert (data["day"], data["slot"], data["sendable"], data["note"]) == ("2026-11-23", "10:00", True, "")
    assert data["store"] == {"code": "SZ001", "name": "深圳科技园店"} and data["group"]["chat_id"] == chat
    assert "小张早安！深圳科技园店今日福利" in data["card"]["text"] and data["card"]["sent"] is False
    row = next(x for x in deliveries(h, "10:00") if x.chat_id == chat)
    assert row.opened_at is not None and row.status == "reminded"
    at(h, 11, 30)                                                    # still the 10:00 slot until 12:00
    assert group(http, chat).json()["slot"] == "10:00"


def test_before_the_first_slot_the_next_one_is_previewed_not_sendable(h):
    at(h, 9, 30)
    http = sign_in(h, "zhangsan")
    data = group(http, h.groups["SZ001"][0]).json()
    assert data["slot"] == "10:00" and data["sendable"] is False and "10:00" in data["note"]
    assert "深圳科技园店" in data["card"]["text"]
    r = tap(http, csrf_of(http.get("/sidebar").text), chat_id=h.groups["SZ001"][0], day="2026-11-23", slot="10:00")
    assert r.status_code == 404 and "没有待发送" in r.json()["error"]


def test_another_stores_group_is_refused_and_ops_see_every_store(h):
    at(h, 10)
    fire(h, "10:00")
    http = sign_in(h, "zhangsan")
    r = group(http, h.groups["SZ002"][0])
    assert r.status_code == 403 and r.json() == {"error": "这个群不属于你负责的门店，不能在这里发送它的内容。"}
    assert "text" not in r.text and "card" not in r.json()
    r = group(http, "wrNOT_A_GROUP")
    assert r.status_code == 404 and "不是机器人管理的门店客户群" in r.json()["error"]
    csrf = csrf_of(http.get("/sidebar").text)
    r = tap(http, csrf, chat_id=h.groups["SZ002"][0], day="2026-11-23", slot="10:00")
    assert r.status_code == 403
    ops = sign_in(h, "ops_lead")
    data = group(ops, h.groups["SZ002"][0]).json()     # SZ002's 10:00 went as the mass message
    assert data["slot"] == "10:00" and data["sendable"] is False and "群发任务" in data["note"]
    assert group(ops, h.groups["SZ001"][0]).json()["sendable"] is True


def test_the_tap_is_recorded_once_and_counted(h):
    at(h, 10)
    fire(h, "10:00")
    http = sign_in(h, "zhangsan")
    csrf = csrf_of(http.get("/sidebar").text)
    chat = h.groups["SZ001"][0]
    h.clock.advance(120)
    r = tap(http, csrf, chat_id=chat, day="2026-11-23", slot="10:00")
    assert r.status_code == 200 and r.json() == {"ok": True, "tapped_at": "10:03"}
    assert tap(http, csrf, chat_id=chat, day="2026-11-23", slot="10:00").status_code == 200   # a second tap
    rows = [x for x in deliveries(h, "10:00") if x.owner == "zhangsan"]
    assert [x.status for x in rows if x.chat_id == chat] == ["sent"]
    assert sum(x.status == "sent" for x in rows) == 1
    with reads_of(h.c.sessions)() as s:
        [fig] = [f for f in slot_figures(s, MONDAY) if f.slot == "10:00"]
    assert fig.tapped == 1
    data = group(http, chat).json()
    assert data["card"]["sent"] is True and data["sendable"] is False
    h.driver.clerk_says("zhangsan", "今日")
    h.pump()
    reply = h.backend.app_messages[-1]["text"]["content"]
    assert "10:00" in reply and "已发1" in reply, reply


def test_a_tap_without_the_csrf_token_or_session_is_refused(h):
    at(h, 10)
    fire(h, "10:00")
    http = sign_in(h, "zhangsan")
    csrf = csrf_of(http.get("/sidebar").text)
    chat = h.groups["SZ001"][0]
    body = {"chat_id": chat, "day": "2026-11-23", "slot": "10:00"}
    assert tap(http, None, **body).status_code == 403
    r = tap(http, "x" * len(csrf), **body)
    assert r.status_code == 403 and "CSRF" in r.json()["error"]
    anonymous = httpx.Client(base_url=h.bot.url)
    assert tap(anonymous, csrf, **body).status_code == 401
    assert http.post("/sidebar/group/sent", content=b"[1]", headers={"X-CSRF-Token": csrf,
                                                                     "content-type": "application/json"}).status_code == 422
    assert tap(http, csrf, chat_id=chat, day="not-a-day", slot="10:00").status_code == 422
    assert all(x.status != "sent" for x in deliveries(h, "10:00"))
    assert tap(http, csrf, **body).status_code == 200                 # the real token still works


def test_script_in_content_stays_inert(db_url, clock):
    stores = [{"code": "SZ001", "name": "<script>alert(1)</script>科技园店", "clerks": ["zhangsan"]}]
    h = harness(db_url, clock, stores)
    try:
        at(h, 10)
        fire(h, "10:00")
        http = sign_in(h, "zhangsan")
        page = http.get("/sidebar")
        assert "<script>alert" not in page.text
        r = group(http, h.groups["SZ001"][0])
        assert r.headers["content-type"] == "application/json" and r.headers["x-content-type-options"] == "nosniff"
        data = r.json()
        assert data["store"]["name"] == "<script>alert(1)</script>科技园店"       # data, set with textContent
        assert "<script>alert(1)</script>" in data["card"]["text"]
    finally:
        h.stop()


def test_the_signed_reminder_link_still_opens_beside_it(h):
    at(h, 10)
    fire(h, "10:00")
    link = h.c.sidebar_links.link(MONDAY, "10:00", "zhangsan")
    page = httpx.get(link)
    assert page.status_code == 200 and f'data-chat="{h.groups["SZ001"][0]}"' in page.text
    with h.c.sessions() as s:
        assert s.scalar(select(SlotDelivery).where(SlotDelivery.day == date(2026, 11, 23).isoformat())) is not None


@pytest.mark.parametrize("userid, stores", [("ops_lead", ["SZ001", "SZ002"]), ("zhangsan", ["SZ001"])])
def test_the_demos_one_click_login_signs_in_through_the_sandbox(h, userid, stores):
    from bot.demo import console_login_link

    browser = httpx.Client(follow_redirects=True)        # one cookie jar for bot and sandbox, as a browser
    page = browser.get(console_login_link(h.bot.url, h.sandbox.url, userid))
    assert page.status_code == 200 and str(page.url) == f"{h.bot.url}/admin"
    assert re.findall(r'class="store-row" data-code="([^"]+)"', page.text) == stores
    # the pick is used once: signed out, the same browser is asked again
    assert "sandbox_login_as" not in [ck.name for ck in browser.cookies.jar]
    browser.cookies.delete("wb_admin")
    assert "选择以哪位成员登录" in browser.get(f"{h.bot.url}/admin").text
    assert browser.get(f"{h.sandbox.url}/_sandbox/auth/as/nobody", params={"next": h.bot.url}).status_code == 400


def test_without_a_jsapi_ticket_the_page_still_answers_and_loads_no_sdk(h):
    http = sign_in(h, "zhangsan")
    h.backend.inject("get_jsapi_ticket", 48002)                      # WeCom refuses the ticket
    page = http.get("/sidebar")
    assert page.status_code == 200 and 'data-wecom="1"' in page.text
    assert '<script id="jsapi" type="application/json">null</script>' in page.text and "jweixin" not in page.text
    assert h.backend.errors["get_jsapi_ticket:48002"] == 1
