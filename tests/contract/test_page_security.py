"""The public member pages against abuse (security issue, item 3), over loopback HTTP on SQLite and
PostgreSQL: capped bodies, rate limits that a script hits and a group behind one NAT address does not,
X-Forwarded-For believed only from trusted proxies, nothing from the query string reflected, every
field validated alone, request_id replays that leak no one's token, security headers, and a server
that closes half-sent requests."""

from __future__ import annotations

import json
import re
import secrets
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import uvicorn
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from bot.app import create_app
from bot.chains.service import ChainError, CleanOrder, InvalidOrder, OrderRequest
from bot.clock import FakeClock
from bot.db.engine import reads_of
from bot.db.models import ChainOrder
from bot.ratelimit import RateLimiter
from bot.sandbox.harness import Harness
from bot.web import SIDEBAR_POLICY, WECOM_JS_SDK, client_address, server_options, trusted_networks
from tests.conftest import ROOT, STORES
from tests.contract.test_chains import chain_row, open_chain, order

RATE_LIMITED = "提交太频繁了，请过一分钟再试。"


def post_raw(h, token, body: dict, **headers) -> httpx.Response:
    """JSON as the standard library writes it: ASCII, so a lone surrogate travels as `\\ud800` (httpx's
    own json= would fail to encode it before sending)."""
    return httpx.post(f"{h.bot.url}/c/{token}/orders", content=json.dumps(body).encode(),
                      headers={"content-type": "application/json", **headers}, timeout=10)


def good(name="王阿姨", tail="1234", qty=1, **extra) -> dict:
    return {"name": name, "phone_tail": tail, "qty": qty, "request_id": secrets.token_hex(8), **extra}


class Served:
    """The bot's app on its own uvicorn server, started with `server_options` as `serve` starts it
    (the harness's server keeps uvicorn's defaults, which believe X-Forwarded-For from 127.0.0.1)."""

    def __init__(self, app, **options):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                                    timeout_graceful_shutdown=2, **options))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        while not self.server.started:
            assert self.thread.is_alive(), "server did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(5)
        self.sock.close()


# -- bodies -------------------------------------------------------------------------------------

def _chunks(total: int, size: int = 64 * 1024):
    sent = 0
    while sent < total:
        yield b"x" * min(size, total - sent)
        sent += size


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_an_order_over_the_cap_answers_413_while_streaming(synced, declared):
    h = synced
    token, _ = open_chain(h)
    body = json.dumps(good(name="x" * 9000)).encode()            # past 8 KiB
    content = body if declared else iter([body[:4096], body[4096:]])
    res = httpx.post(f"{h.bot.url}/c/{token}/orders", content=content,
                     headers={"content-type": "application/json"}, timeout=10)
    assert res.status_code == 413 and res.json()["error"] == "too_large"
    assert chain_row(h, token).stock_left == 200


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_the_server_survives_a_50_mb_upload_and_still_takes_orders(synced, declared):
    h = synced
    token, _ = open_chain(h)
    size = 50 * 1024 * 1024
    headers = {"content-type": "application/json"}
    if declared:
        headers["content-length"] = str(size)
    res = httpx.post(f"{h.bot.url}/c/{token}/orders", content=_chunks(size), headers=headers, timeout=60)
    assert res.status_code == 413
    assert order(h, token).status_code == 201


# -- rate limits --------------------------------------------------------------------------------

def test_one_buyer_hammering_gets_429_with_a_chinese_message_and_others_do_not(synced):
    h = synced
    token, _ = open_chain(h, stock=100, limit=2)
    answers = [order(h, token, qty=1).status_code for _ in range(6)]
    assert answers == [201, 201, 409, 409, 409, 409]               # six a minute: the limit answers, not the door
    refused = order(h, token, qty=1)
    assert refused.status_code == 429 and refused.json() == {"message": RATE_LIMITED, "error": "rate_limited"}
    assert int(refused.headers["retry-after"]) >= 1
    assert order(h, token, name="李叔", tail="5678").status_code == 201   # same address, another person
    h.clock.advance(seconds=10)                                    # a token back every 10 s
    assert order(h, token, qty=1).status_code == 409
    assert order(h, token, qty=1).status_code == 429


def test_without_javascript_a_refused_sign_up_gets_the_page_with_the_fixed_message(synced):
    h = synced
    token, _ = open_chain(h, stock=100, limit=2)
    form = {"name": "钱阿姨", "phone_tail": "2468", "qty": "1"}
    for _ in range(6):
        httpx.post(f"{h.bot.url}/c/{token}/orders", data={**form, "request_id": secrets.token_hex(8)})
    page = httpx.post(f"{h.bot.url}/c/{token}/orders", data={**form, "request_id": secrets.token_hex(8)})
    assert page.status_code == 429 and page.headers["content-type"].startswith("text/html")
    assert RATE_LIMITED in page.text and 'id="order"' in page.text  # the form is still there


def test_a_group_behind_one_nat_address_signs_up_and_a_script_past_it_is_refused(synced):
    """300 different people from one address in the same minute all get in; the 301st submit waits."""
    h = synced
    token, _ = open_chain(h, stock=1000, limit=2)
    with httpx.Client(timeout=30) as http, ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda i: http.post(f"{h.bot.url}/c/{token}/orders",
                                                  json=good(name=f"顾客{i}", tail=f"{i:04d}")).status_code,
                              range(300)))
    assert codes == [201] * 300
    assert order(h, token, name="顾客300", tail="0300").status_code == 429
    assert chain_row(h, token).stock_left == 700


def _trusting_harness(db_url, clock, trusted):
    h = Harness(database_url=db_url, stores=STORES, clock=clock, calendar_dir=ROOT / "content_calendar",
                workers=False, settings_overrides={"trusted_proxies": trusted}).start()
    h.sync()
    return h


@pytest.mark.parametrize("trusted", [[], ["127.0.0.0/8"]], ids=["no-proxy", "behind-proxy"])
def test_x_forwarded_for_is_believed_only_from_a_trusted_proxy(db_url, clock, trusted):
    h = _trusting_harness(db_url, clock, trusted)
    try:
        token, _ = open_chain(h, stock=100, limit=2)
        with Served(create_app(h.c), **server_options(h.c.settings)) as srv:
            def submit(xff: str) -> int:
                return httpx.post(f"{srv.url}/c/{token}/orders", json=good(), headers={"x-forwarded-for": xff},
                                  timeout=10).status_code
            # A script inventing the left part of the header: the right-most untrusted hop is what counts.
            spoofed = [submit(f"10.9.9.{i}, 203.0.113.7") for i in range(7)]
            assert spoofed[-1] == 429
            # Seven different real clients through the proxy are seven addresses; with no proxy
            # configured the header is the client's own words and every one is 127.0.0.1.
            varied = [submit(f"198.51.100.{i}") for i in range(7)]
            assert (429 in varied) == (not trusted)
    finally:
        h.stop()


@pytest.mark.parametrize("peer, xff, trusted, expected", [
    ("203.0.113.5", ["1.2.3.4"], [], "203.0.113.5"),                         # no proxy: the peer
    ("203.0.113.5", ["1.2.3.4"], ["10.0.0.0/8"], "203.0.113.5"),             # peer not a proxy of ours
    ("10.0.0.2", ["1.2.3.4"], ["10.0.0.0/8"], "1.2.3.4"),
    ("10.0.0.2", ["6.6.6.6, 1.2.3.4"], ["10.0.0.0/8"], "1.2.3.4"),           # the client wrote 6.6.6.6
    ("10.0.0.2", ["6.6.6.6, 1.2.3.4, 10.0.0.9"], ["10.0.0.0/8"], "1.2.3.4"),  # two proxies of ours
    ("10.0.0.2", ["6.6.6.6", "1.2.3.4"], ["10.0.0.0/8"], "1.2.3.4"),         # the header twice
    ("10.0.0.2", ["1.2.3.4, garbage"], ["10.0.0.0/8"], "10.0.0.2"),          # not an address: stop
    ("10.0.0.2", [], ["10.0.0.2"], "10.0.0.2"),
    ("::ffff:10.0.0.2", ["2001:db8::1"], ["10.0.0.0/8"], "2001:db8::1"),
    ("10.0.0.2", ["1.2.3.4:5678"], ["10.0.0.0/8"], "1.2.3.4"),               # a load balancer that adds the port
    ("10.0.0.2", ["[2001:db8::1]:5678"], ["10.0.0.0/8"], "2001:db8::1"),
])
def test_client_address(peer, xff, trusted, expected):
    assert client_address(peer, xff, trusted_networks(trusted)) == expected


def test_a_bad_trusted_proxy_entry_is_named():
    with pytest.raises(ValueError, match="'10.0.0.300'"):
        trusted_networks(["10.0.0.300"])


def test_the_limiter_refills_by_the_injected_clock_and_forgets_old_keys():
    clock = FakeClock()
    limiter = RateLimiter(6, clock, max_keys=3)
    assert [limiter.hit("a") for _ in range(6)] == [0.0] * 6
    assert limiter.hit("a") == pytest.approx(10.0)                 # 6 a minute: one back every 10 s
    clock.advance(seconds=10)
    assert limiter.hit("a") == 0.0 and limiter.hit("a") > 0
    for key in "bcd":
        limiter.hit(key)
    assert len(limiter) == 3                                       # "a", the least recently seen, went
    assert RateLimiter(0, clock).hit("x") == 0.0                   # 0: no limit


# -- nothing from the query string is reflected -------------------------------------------------

def test_the_page_reflects_no_text_from_its_query_string(synced):
    h = synced
    token, _ = open_chain(h)
    crafted = "<script>alert(1)</script>官方通知：请转账到"
    page = httpx.get(f"{h.bot.url}/c/{token}", params={"error": crafted, "g": "wr<script>x", "mine": crafted})
    assert page.status_code == 200
    assert "官方通知" not in page.text and "alert(1)" not in page.text and "<script>x" not in page.text
    assert 'id="message"' not in page.text                         # an unknown code shows nothing
    cancelled = httpx.get(f"{h.bot.url}/c/{token}", params={"error": "cancelled"})
    assert re.search(r'<div class="msg ok" id="message">已取消报名。</div>', cancelled.text)


def test_odd_bytes_in_a_url_answer_404_never_500(synced):
    h = synced
    token, _ = open_chain(h)
    assert httpx.get(f"{h.bot.url}/c/%00").status_code == 404
    assert httpx.get(f"{h.bot.url}/c/{token}?mine=%00&g=%00").status_code == 200
    assert httpx.delete(f"{h.bot.url}/c/{token}/orders/%00").status_code == 404
    assert httpx.post(f"{h.bot.url}/c/%00/orders", json=good()).status_code == 404


def test_a_cancel_without_javascript_comes_back_with_the_fixed_message(synced):
    h = synced
    token, _ = open_chain(h)
    placed = order(h, token).json()
    res = httpx.post(f"{h.bot.url}/c/{token}/orders/{placed['order_token']}/cancel?g=wr<x>")
    assert res.status_code == 303 and res.headers["location"] == f"/c/{token}?g=&error=cancelled"


# -- every field validated alone ----------------------------------------------------------------

BAD_FIELDS = {
    "lone surrogate in name": {"name": "王\ud800"},
    "lone surrogate in g": {"g": "\ud800"},
    "bidi override in name": {"name": "\u202e王阿姨"},
    "bidi isolate in name": {"name": "王\u2066阿姨"},
    "zero-width only name": {"name": "\u200b\u200d"},
    "whitespace only name": {"name": "\u3000 \u3000"},
    "control in name": {"name": "王\x00阿姨"},
    "name not a string": {"name": ["王阿姨"]},
    "arabic-indic phone digits": {"phone_tail": "١٢٣٤"},
    "full-width phone digits": {"phone_tail": "１２３４"},
    "phone tail a number": {"phone_tail": 1234},
    "full-width qty": {"qty": "１"},
    "arabic-indic qty": {"qty": "١"},
    "qty a boolean": {"qty": True},
    "qty a float": {"qty": 1.0},
    "g not ASCII": {"g": "wr群"},
    "g with markup": {"g": "wr<script>"},
    "request_id not ASCII": {"request_id": "请求编号请求编号"},
}


@pytest.mark.parametrize("bad", BAD_FIELDS.values(), ids=BAD_FIELDS.keys())
def test_a_bad_field_answers_422_and_takes_nothing(synced, bad):
    h = synced
    token, _ = open_chain(h)
    res = post_raw(h, token, {**good(), **bad})
    assert res.status_code == 422 and res.json()["message"]
    assert chain_row(h, token).stock_left == 200


def test_deeply_nested_json_answers_422(synced):
    h = synced
    token, _ = open_chain(h)
    res = httpx.post(f"{h.bot.url}/c/{token}/orders", content=b"[" * 4000 + b"]" * 4000,
                     headers={"content-type": "application/json"})
    assert res.status_code == 422


def test_names_people_type_still_pass(synced):
    h = synced
    token, _ = open_chain(h, stock=10, limit=2)
    for name in ("王阿姨", "Mary Wang", "王\u3000阿姨", "🌸花姐", "👩\u200d🍳李厨"):
        assert order(h, token, name=name, tail=f"{len(name):04d}").status_code == 201, name


def test_poisoned_orders_fail_alone_in_a_crowd(synced):
    """100 real sign-ups at once with a few poisoned ones among them: every real one 201, each
    poisoned one 422, nothing 500 (the probe: 17 of 100 real orders failed next to 2 poisoned)."""
    h = synced
    token, _ = open_chain(h, stock=500, limit=2)
    real = [good(name=f"顾客{i}", tail=f"{i:04d}") for i in range(100)]
    poison = [good(name="\ud800"), good(g="\ud800"), good(name="\u202eevil"), good(tail="١٢٣٤")]
    bodies = real[:50] + poison + real[50:]
    with httpx.Client(timeout=30) as http, ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(lambda b: http.post(f"{h.bot.url}/c/{token}/orders", content=json.dumps(b).encode(),
                                                  headers={"content-type": "application/json"}).status_code, bodies))
    assert codes[:50] + codes[54:] == [201] * 100 and codes[50:54] == [422] * 4
    assert chain_row(h, token).stock_left == 400


def test_a_row_the_database_refuses_fails_alone_inside_one_batch(synced):
    """Past validation (as a future field might slip through): the batch's savepoints keep a value the
    database will not store to its own order, in the three-statement path and the one-by-one path."""
    h = synced
    token, _ = open_chain(h, stock=100, limit=2)
    chain, now = chain_row(h, token), h.clock.now()
    items = [OrderRequest(chain, CleanOrder(f"顾客{i}", f"{i:04d}", 1, secrets.token_hex(8)), None, now)
             for i in range(10)]
    items.insert(3, OrderRequest(chain, CleanOrder("\ud800", "0001", 1, secrets.token_hex(8)), None, now))  # fails to encode
    items.insert(7, OrderRequest(chain, CleanOrder("好人", "0002", 1, secrets.token_hex(8)), "\ud800", now))  # a chat id too
    outcomes = h.c.order_batcher.commit_batch(items)
    assert isinstance(outcomes[3], InvalidOrder) and isinstance(outcomes[7], InvalidOrder)
    placed = [o for i, o in enumerate(outcomes) if i not in (3, 7)]
    assert len(placed) == 10 and all(isinstance(o, tuple) and o[1] is True for o in placed)
    assert chain_row(h, token).stock_left == 100 - 10


# -- a replayed request_id hands out no one else's order ----------------------------------------

def test_a_request_id_replayed_by_someone_else_gets_no_token(synced):
    h = synced
    token, _ = open_chain(h, stock=10, limit=2)
    first = order(h, token, name="王阿姨", tail="1234", qty=2, rid="request-0001")
    secret = first.json()["order_token"]
    assert first.status_code == 201
    for other in ({"name": "李叔", "tail": "5678"}, {"name": "王阿姨", "tail": "9999"}, {"qty": 1}):
        kw = {"name": "王阿姨", "tail": "1234", "qty": 2, **other}
        res = order(h, token, rid="request-0001", **kw)
        assert res.status_code == 409 and res.json()["error"] == "request_reused", other
        assert secret not in res.text
    again = order(h, token, name="王阿姨", tail="1234", qty=2, rid="request-0001")   # the honest retry
    assert again.status_code == 200 and again.json()["order_token"] == secret


def test_a_request_id_raced_by_another_buyer_in_one_batch_gets_no_token(synced):
    h = synced
    token, _ = open_chain(h, stock=10, limit=2)
    chain, now = chain_row(h, token), h.clock.now()
    outcomes = h.c.order_batcher.commit_batch([
        OrderRequest(chain, CleanOrder("王阿姨", "1234", 1, "request-0002"), None, now),
        OrderRequest(chain, CleanOrder("李叔", "5678", 1, "request-0002"), None, now)])
    assert outcomes[0][1] is True
    assert isinstance(outcomes[1], ChainError) and outcomes[1].status == 409
    with reads_of(h.c.sessions)() as s:
        assert [o.name for o in s.scalars(select(ChainOrder))] == ["王阿姨"]


# -- headers ------------------------------------------------------------------------------------

def _assert_page_headers(res: httpx.Response, scripts: str = "script-src 'self';") -> None:
    assert res.headers["content-type"].startswith("text/html")
    csp = res.headers["content-security-policy"]
    assert scripts in csp and "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]
    assert "frame-ancestors 'self'" in csp and "object-src 'none'" in csp and "base-uri 'none'" in csp
    assert res.headers["x-content-type-options"] == "nosniff"
    assert res.headers["referrer-policy"] == "no-referrer"


def test_every_page_carries_the_security_headers(synced):
    h = synced
    token, reply = open_chain(h)
    page = httpx.get(f"{h.bot.url}/c/{token}")
    _assert_page_headers(page)
    assert "<script>" not in page.text and '<script src="/static/chain.js" defer></script>' in page.text
    missing = httpx.get(f"{h.bot.url}/c/nosuchchain")
    assert missing.status_code == 404
    _assert_page_headers(missing)
    h.driver.clerk_says("zhangsan", "截单 1")
    h.pump()
    closed = httpx.post(f"{h.bot.url}/c/{token}/orders", data={**good(), "qty": "1"})
    assert closed.status_code == 410
    _assert_page_headers(closed)
    api = order(h, token)
    assert api.headers["x-content-type-options"] == "nosniff" and api.headers["referrer-policy"] == "no-referrer"
    assert "content-security-policy" not in api.headers
    js = httpx.get(f"{h.bot.url}/static/chain.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"] and "countdown" in js.text


def test_the_sidebar_allows_exactly_wecoms_js_sdk_and_wecoms_frames(synced):
    h = synced
    assert h.c.client.access_token                                 # see test_broadcast._warm_token
    _, reply = open_chain(h)
    url = re.search(r"(http://\S+/sidebar/chain/\S+)", reply).group(1)
    page = httpx.get(url, headers={"user-agent": "Mozilla/5.0 (iPhone) wxwork/4.1.22 MicroMessenger/7.0.1"})
    assert page.status_code == 200
    _assert_page_headers(page, scripts="script-src 'self' " + " ".join(WECOM_JS_SDK) + ";")
    assert page.headers["content-security-policy"] == SIDEBAR_POLICY
    assert "frame-ancestors 'self' https://work.weixin.qq.com https://*.work.weixin.qq.com" in SIDEBAR_POLICY
    external = re.findall(r'<script src="(https://[^"]+)"', page.text)
    assert external == list(WECOM_JS_SDK)                           # the template loads what the CSP allows
    inline = re.findall(r"<script(?![^>]*\bsrc=)(?![^>]*application/json)[^>]*>", page.text)
    assert inline == []
    forbidden = httpx.get(url.replace("zhangsan", "lisi"))
    assert forbidden.status_code == 403 and "content-security-policy" in forbidden.headers


# -- the server: half-sent requests do not hold connections -------------------------------------

async def _hello(request):
    return PlainTextResponse(f"hi {len(await request.body())}")


def _tiny_app():
    return Starlette(routes=[Route("/hello", _hello, methods=["GET", "POST"])])


def _closed_by_server(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (the socket's timeout is only a safety net)."""
    sock.settimeout(30)
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def test_half_sent_request_heads_are_closed_and_whole_ones_served():
    with Served(_tiny_app(), **server_options(None, head_timeout=0.3)) as srv:
        heads = []
        for _ in range(200):                                        # the probe, scaled down
            sock = socket.create_connection(("127.0.0.1", srv.port))
            sock.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            heads.append(sock)
        assert httpx.get(f"{srv.url}/hello").text == "hi 0"
        for sock in heads:
            assert _closed_by_server(sock).startswith(b"HTTP/1.1 408")
            sock.close()


def test_a_connection_idle_before_its_first_byte_and_a_stalled_body_are_closed():
    with Served(_tiny_app(), **server_options(None, head_timeout=0.3)) as srv:
        idle = socket.create_connection(("127.0.0.1", srv.port))
        assert _closed_by_server(idle).startswith(b"HTTP/1.1 408")
        stalled = socket.create_connection(("127.0.0.1", srv.port))
        stalled.sendall(b"POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        assert _closed_by_server(stalled).startswith(b"HTTP/1.1 408")   # the app was waiting for the body
        for sock in (idle, stalled):
            sock.close()


def test_a_keep_alive_connection_gets_a_new_deadline_per_request():
    with Served(_tiny_app(), **server_options(None, head_timeout=0.3)) as srv:
        sock = socket.create_connection(("127.0.0.1", srv.port))
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(30)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n")        # the second head, never finished
        assert _closed_by_server(sock).startswith(b"HTTP/1.1 408")
        sock.close()


def test_an_endless_request_head_is_refused_431():
    with Served(_tiny_app(), **server_options(None)) as srv:
        sock = socket.create_connection(("127.0.0.1", srv.port))
        # 33 KiB of head in one go, then nothing: the server has read it all when it refuses
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 33 * 1024 + b"\r\n")
        assert _closed_by_server(sock).startswith(b"HTTP/1.1 431")
        sock.close()


def test_server_options_leave_the_client_address_to_the_app():
    options = server_options(None)
    assert options["proxy_headers"] is False and options["timeout_keep_alive"] <= 5
    assert options["http"].__name__ == "BoundedHttpProtocol"
