"""The ops console through HTTP: WeCom login via the sandbox's pages (redirects followed by hand),
who sees what, Bearer, session expiry, CSRF, and the dashboard's figures against what the harness did."""

from __future__ import annotations

import html
import re
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from bot.sandbox.harness import Harness
from tests.conftest import ROOT, STORES

DESKTOP_UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120 Safari/537.36"
WXWORK_UA = "Mozilla/5.0 (iPhone) AppleWebKit/605.1.15 Mobile/15E148 wxwork/4.1.30 MicroMessenger/7.0.1"
BEARER = {"Authorization": "Bearer harness"}


@pytest.fixture
def h(db_url, clock):
    h = Harness(database_url=db_url, stores=STORES, clock=clock, calendar_dir=ROOT / "content_calendar",
                workers=False, settings_overrides={"ops_userids": ["ops_lead"]})
    h.start()
    h.backend.add_member("ops_lead")
    h.backend.add_member("stranger")
    report = h.sync()
    assert not report.failed, report.summary()
    yield h
    h.stop()


def start_login(h, http: httpx.Client, ua: str = DESKTOP_UA) -> str:
    """/admin/login → the sandbox's login page; returns that page's URL."""
    r = http.get("/admin/login", headers={"user-agent": ua})
    assert r.status_code == 302
    return r.headers["location"]


def pick(h, login_url: str, userid: str) -> str:
    """On the sandbox's page, pick a member: returns the bot's /admin/auth?code&state URL."""
    page = httpx.get(login_url.split("#")[0])
    assert page.status_code == 200, page.text
    href = html.unescape(re.search(rf'id="pick-{re.escape(userid)}" href="([^"]+)"', page.text).group(1))
    r = httpx.get(h.sandbox.url + href)
    assert r.status_code == 302
    return r.headers["location"]


def login(h, userid: str, ua: str = DESKTOP_UA) -> httpx.Client:
    http = httpx.Client(base_url=h.bot.url)
    back = pick(h, start_login(h, http, ua), userid)
    r = http.get(back)
    assert r.status_code == 303 and r.headers["location"] == "/admin", r.text
    return http


def store_codes(page: str) -> list[str]:
    return re.findall(r'class="store-row" data-code="([^"]+)"', page)


def test_desktop_login_goes_to_web_login_and_wxwork_to_oauth(h):
    http = httpx.Client(base_url=h.bot.url)
    web = urlsplit(start_login(h, http))
    q = parse_qs(web.query)
    assert web.path == "/wwlogin/sso/login"
    assert q["login_type"] == ["CorpApp"] and q["appid"] == [h.corp.corp_id] and q["agentid"] == [str(h.corp.agent_id)]
    assert q["redirect_uri"] == [f"{h.cfg.public_base_url}/admin/auth"] and q["state"][0]
    oauth = start_login(h, http, WXWORK_UA)
    assert oauth.endswith("#wechat_redirect")
    o = urlsplit(oauth)
    q = parse_qs(o.query)
    assert o.path == "/connect/oauth2/authorize"
    assert q["scope"] == ["snsapi_base"] and q["response_type"] == ["code"] and q["agentid"] == [str(h.corp.agent_id)]
    cookie = http.cookies.jar
    attrs = [c for c in cookie if c.name == "wb_admin_state"][0]
    assert attrs.path == "/admin" and attrs.has_nonstandard_attr("HttpOnly")


def test_a_browser_without_a_session_is_sent_to_login(h):
    r = httpx.get(f"{h.bot.url}/admin/stores/SZ001")
    assert r.status_code == 303 and r.headers["location"].startswith("/admin/login?next=")
    assert httpx.get(f"{h.bot.url}/admin", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_ops_sees_every_store_and_the_session_cookie_is_safe(h):
    http = httpx.Client(base_url=h.bot.url)
    back = pick(h, start_login(h, http, WXWORK_UA), "ops_lead")
    r = http.get(back)
    assert r.status_code == 303
    set_cookie = r.headers["set-cookie"].lower()
    assert "wb_admin=" in set_cookie and "httponly" in set_cookie and "samesite=lax" in set_cookie
    assert "secure" not in set_cookie.split("wb_admin=", 1)[1].split(",")[0]      # http: no Secure
    page = http.get("/admin")
    assert page.status_code == 200
    assert store_codes(page.text) == ["SZ001", "SZ002"]
    assert http.get("/admin/stores/SZ002").status_code == 200


def test_a_clerk_sees_only_their_stores(h):
    http = login(h, "zhangsan")
    page = http.get("/admin").text
    assert store_codes(page) == ["SZ001"] and "深圳海岸城店" not in page
    assert http.get("/admin/stores/SZ001").status_code == 200
    assert http.get("/admin/stores/SZ002").status_code == 404
    cal = http.get("/admin/calendar", params={"store": "SZ002"})
    assert cal.status_code == 404
    assert http.get("/admin/calendar").status_code == 200          # their own store by default


def test_a_member_without_rights_gets_a_chinese_403(h):
    http = httpx.Client(base_url=h.bot.url)
    r = http.get(pick(h, start_login(h, http), "stranger"))
    assert r.status_code == 403 and "无权访问" in r.text and "wb_admin=" not in r.headers.get("set-cookie", "")
    http = httpx.Client(base_url=h.bot.url)
    r = http.get(pick(h, start_login(h, http), "__stranger__"))      # not in the corp: openid only
    assert r.status_code == 403 and "不是本企业的成员" in r.text


def test_state_is_bound_to_the_browser_and_used_once(h):
    mine = httpx.Client(base_url=h.bot.url)
    back = pick(h, start_login(h, mine), "ops_lead")
    other = httpx.Client(base_url=h.bot.url)                         # a browser that did not start this login
    assert other.get(back).status_code == 403
    start_login(h, other)                                            # …even with a state cookie of its own
    assert other.get(back).status_code == 403
    forged = re.sub(r"state=[^&]+", "state=forged", back)
    assert mine.get(forged).status_code == 403
    # the cookie was not spent by the forgery? It was: a refused state drops it; start again
    mine = httpx.Client(base_url=h.bot.url)
    back = pick(h, start_login(h, mine), "ops_lead")
    saved = dict(mine.cookies)
    assert mine.get(back).status_code == 303
    replay = httpx.Client(base_url=h.bot.url, cookies=saved)         # the same cookie and state again
    assert replay.get(back).status_code == 403


def test_a_reused_or_stale_code_is_refused(h):
    http = httpx.Client(base_url=h.bot.url)
    back = pick(h, start_login(h, http), "ops_lead")
    code = parse_qs(urlsplit(back).query)["code"][0]
    assert http.get(back).status_code == 303
    # a fresh state, the old code: WeCom answers 40029
    second = httpx.Client(base_url=h.bot.url)
    state = parse_qs(urlsplit(start_login(h, second)).query)["state"][0]
    r = second.get("/admin/auth", params={"code": code, "state": state})
    assert r.status_code == 403 and "登录码无效" in r.text
    assert h.backend.errors["auth/getuserinfo:40029"] == 1
    third = httpx.Client(base_url=h.bot.url)
    back = pick(h, start_login(h, third), "ops_lead")
    h.clock.advance(301)                                             # a code lives 5 minutes
    assert third.get(back).status_code == 403


def test_bearer_works_and_an_expired_session_is_refused(h):
    r = httpx.get(f"{h.bot.url}/admin", headers=BEARER)
    assert r.status_code == 200 and store_codes(r.text) == ["SZ001", "SZ002"]
    http = login(h, "zhangsan")
    assert http.get("/admin").status_code == 200
    h.clock.advance(hours=11, minutes=59)
    assert http.get("/admin").status_code == 200
    h.clock.advance(minutes=2)                                       # admin.session_hours: 12
    r = http.get("/admin")
    assert r.status_code == 303 and r.headers["location"].startswith("/admin/login")


def test_no_post_without_its_csrf_token(h):
    http = login(h, "ops_lead")
    page = http.get("/admin").text
    token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    assert http.post("/admin/logout").status_code == 403
    assert http.post("/admin/logout", data={"csrf": "x" * len(token)}).status_code == 403
    assert http.get("/admin").status_code == 200                     # still signed in
    r = http.post("/admin/logout", data={"csrf": token})
    assert r.status_code == 200 and "已退出" in r.text
    assert http.get("/admin").status_code == 303


def test_dashboard_figures_match_what_happened(h):
    exts = [h.driver.member_adds_clerk("SZ001").fields["ExternalUserID"] for _ in range(3)]
    h.driver.member_adds_clerk("SZ002")
    h.pump()
    h.clock.advance(30)
    h.driver.member_joins_group("SZ001", exts[0])
    h.driver.member_joins_group("SZ001", exts[1])
    h.pump()
    page = httpx.get(f"{h.bot.url}/admin", headers=BEARER).text

    def kpi(period: str, name: str) -> str:
        block = page.split(f'id="funnel-{period}"', 1)[1].split("</section>", 1)[0]
        return re.search(rf'class="{name}">([^<]+)<', block).group(1)

    for period in ("today", "7d", "30d"):
        assert (kpi(period, "adds"), kpi(period, "joined"), kpi(period, "conv")) == ("4", "2", "50%")
    rows = dict(re.findall(r'data-code="(\w+)">.*?<td class="n">(\d+)</td>', page, re.S))
    assert rows == {"SZ001": "3", "SZ002": "1"}
    # sort by adds ascending, and a filter
    asc = httpx.get(f"{h.bot.url}/admin", headers=BEARER, params={"sort": "adds"}).text
    assert store_codes(asc) == ["SZ002", "SZ001"]
    only = httpx.get(f"{h.bot.url}/admin", headers=BEARER, params={"q": "海岸"}).text
    assert store_codes(only) == ["SZ002"]
    # a clerk's dashboard counts their stores only
    mine = login(h, "zhangsan").get("/admin").text
    block = mine.split('id="funnel-today"', 1)[1]
    assert re.search(r'class="adds">(\d+)<', block).group(1) == "3"


def test_store_detail_and_calendar_preview_render(h):
    h.driver.member_adds_clerk("SZ001")
    h.pump()
    r = httpx.get(f"{h.bot.url}/admin/stores/SZ001", headers=BEARER)
    assert r.status_code == 200 and "深圳科技园店" in r.text and "<svg" in r.text
    assert "/200" in r.text                                           # groups against the scan cap
    cal = httpx.get(f"{h.bot.url}/admin/calendar", headers=BEARER, params={"store": "SZ001", "week": "2026-11-25"})
    assert cal.status_code == 200
    assert 'id="day-2026-11-23"' in cal.text and 'id="day-2026-11-29"' in cal.text   # Monday to Sunday
    assert cal.text.count('class="msg slot"') > 0
    assert "<script" not in cal.text and "<script" not in r.text
    # every day has at most one mass slot under daily_1
    for day in re.findall(r'<section class="card day".*?</section>', cal.text, re.S):
        assert day.count('<span class="tag ">群发</span>') <= 1


def test_a_store_name_with_markup_stays_inert(db_url, clock):
    stores = [{"code": "XSS01", "name": "<script>alert(1)</script>店", "clerks": ["zhangsan"]}]
    with Harness(database_url=db_url, stores=stores, clock=clock, calendar_dir=ROOT / "content_calendar",
                 workers=False) as h:
        h.sync()
        for path in ("/admin", "/admin/stores/XSS01", "/admin/calendar?store=XSS01"):
            r = httpx.get(h.bot.url + path, headers=BEARER)
            assert r.status_code == 200, path
            assert "<script>alert(1)" not in r.text and "&lt;script&gt;alert(1)" in r.text, path
