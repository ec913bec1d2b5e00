"""What every public HTTP route stands on: bodies read with a cap, the client's address (believing
X-Forwarded-For only from `trusted_proxies`), the security headers on every response, and the
server's own limits (uvicorn keyword arguments, with a request-head deadline uvicorn lacks)."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from typing import Any, NamedTuple
from urllib.parse import parse_qs

from starlette.datastructures import MutableHeaders
from starlette.responses import JSONResponse
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.auto import AutoHTTPProtocol

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

HEAD_TIMEOUT_SECONDS = 10.0     # a request's head (and a small body) must arrive within this
MAX_HEAD_BYTES = 32 * 1024      # request line + headers; nginx's default large_client_header_buffers is 4 × 8k
KEEP_ALIVE_SECONDS = 5
MAX_CONNECTIONS = 2048          # past it uvicorn answers 503 instead of queueing without bound


# -- bodies -----------------------------------------------------------------------------------
class BodyRejected(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


async def read_capped(request: Request, cap: int) -> bytes:
    """The body, refused with 413 as soon as it passes `cap`: by its Content-Length before reading,
    and while streaming for chunked bodies (or a Content-Length that lies), so 50 MB never sits in memory."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > cap:
        raise BodyRejected(413, f"body over {cap} bytes")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > cap:
                raise BodyRejected(413, f"body over {cap} bytes")
    except ClientDisconnect:  # nobody to answer; not a server error
        raise BodyRejected(400, "client went away") from None
    return bytes(body)


async def read_capped_asgi(scope: Scope, receive: Receive, cap: int) -> bytes:
    """read_capped on the raw ASGI channel, for a route that skips the framework (RawRoute)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            if value.isdigit() and int(value) > cap:
                raise BodyRejected(413, f"body over {cap} bytes")
            break
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":   # nobody to answer; not a server error
            raise BodyRejected(400, "client went away")
        body += message.get("body", b"")
        if len(body) > cap:
            raise BodyRejected(413, f"body over {cap} bytes")
        if not message.get("more_body", False):
            return body


async def send_text(send: Send, status: int, text: str, content_type: bytes = b"text/plain; charset=utf-8") -> None:
    """A whole response in two messages, as PlainTextResponse sends it."""
    body = text.encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", str(len(body)).encode()), (b"content-type", content_type)]})
    await send({"type": "http.response.body", "body": body})


class RawRoute:
    """One (method, path) answered by a bare ASGI handler, in front of the framework's router: for
    the one hot route (the WeCom callback), whose per-request cost was mostly FastAPI's own (route
    matching, dependency solving, the Request and Response objects). Everything else passes on.
    Install it inside SecurityHeaders, so its answers carry the same headers."""

    def __init__(self, app: ASGIApp, method: str, path: str, handler: ASGIApp):
        self.app = app
        self.method = method
        self.path = path
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == self.path and scope["method"] == self.method:
            await self.handler(scope, receive, send)
        else:
            await self.app(scope, receive, send)


class MemberBody(NamedTuple):
    fields: dict
    is_form: bool       # a no-JavaScript form post: answer with a page, not JSON


async def read_member_body(request: Request, cap: int) -> MemberBody | JSONResponse:
    """What a member's page posts, a form or a JSON object, read under `cap`; or the Chinese 413 or
    422 answer to give instead."""
    try:
        raw = await read_capped(request, cap)
    except BodyRejected as e:
        return JSONResponse({"message": "提交的内容太长了。", "error": "too_large"}, status_code=e.status)
    is_form = "application/x-www-form-urlencoded" in request.headers.get("content-type", "")
    try:
        if is_form:
            fields = {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}
        else:
            fields = json.loads(raw or b"{}")
            if not isinstance(fields, dict):
                raise ValueError
    except (ValueError, RecursionError):   # RecursionError: [[[[… nested past the parser's depth
        return JSONResponse({"message": "请求格式不对。", "error": "malformed"}, status_code=422)
    return MemberBody(fields, is_form)


# -- the client's address ---------------------------------------------------------------------
def trusted_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """`trusted_proxies` entries: addresses or CIDR networks. A bad entry fails at start-up, named."""
    nets = []
    for entry in entries:
        try:
            nets.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"trusted_proxies: {entry!r} is not an address or a CIDR network") from None
    return tuple(nets)


def _address(text: str) -> Address | None:
    """An address as proxies write it: `1.2.3.4`, `1.2.3.4:5678` (some load balancers add the port),
    `2001:db8::1`, `[2001:db8::1]:5678`."""
    text = text.strip()
    if text.startswith("[") and "]" in text:
        text = text[1:text.index("]")]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    return (ip.ipv4_mapped or ip) if isinstance(ip, ipaddress.IPv6Address) else ip   # ::ffff:a.b.c.d is a.b.c.d


def _trusted(ip: Address | None, trusted: tuple[Network, ...]) -> bool:
    return ip is not None and any(ip.version == net.version and ip in net for net in trusted)


def client_address(peer: str | None, forwarded_for: list[str], trusted: tuple[Network, ...]) -> str:
    """The peer, unless the peer is a trusted proxy: then the right-most X-Forwarded-For hop that is
    not a trusted proxy (everything left of it was written by the client and may be invented)."""
    peer_ip = _address(peer or "")
    if not _trusted(peer_ip, trusted):
        return str(peer_ip) if peer_ip else (peer or "")
    client = peer_ip
    for hop in reversed([h for value in forwarded_for for h in value.split(",") if h.strip()]):
        ip = _address(hop)
        if ip is None:          # not written by a proxy of ours: stop at the last hop we trust
            break
        client = ip
        if not _trusted(ip, trusted):
            break
    return str(client)


def request_address(request: Request, trusted: tuple[Network, ...]) -> str:
    return client_address(request.client.host if request.client else None,
                          request.headers.getlist("x-forwarded-for"), trusted)


def address_key(address: str) -> str:
    """What a per-address limit counts: an IPv4 address, or an IPv6 /64 (one subscriber's prefix:
    a phone on IPv6 can pick any address inside it)."""
    ip = _address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return address


# -- headers ----------------------------------------------------------------------------------
# WeCom's JS-SDK, exactly the two files bot/templates/chat_tool_base.html loads: jweixin for wx.config and
# jwxwork for wx.agentConfig ("调用 wx.agentConfig需要引入 jwxwork sdk",
# https://developer.work.weixin.qq.com/document/path/94313). WeCom now also ships
# wecom-jssdk-2.x (ww.register, document/path/98560); moving to it changes this list.
WECOM_JS_SDK = ("https://res.wx.qq.com/open/js/jweixin-1.2.0.js",
                "https://open.work.weixin.qq.com/wwopen/js/jwxwork-1.0.0.js")
# UNCONFIRMED (no WeCom client here to try): the sidebar opens top-level in WeCom's webview (phone and desktop); the web console
# may frame it, so WeCom's web origins may too. Nobody else may frame a page (clickjacking).
WECOM_FRAMERS = ("https://work.weixin.qq.com", "https://*.work.weixin.qq.com")


def content_security_policy(scripts: Iterable[str] = (), framers: Iterable[str] = ()) -> str:
    """No inline script anywhere (the pages' scripts are /static files); inline style is allowed:
    the templates carry their CSS in a <style> block, and CSS cannot run code."""
    return "; ".join([
        "default-src 'self'", "script-src " + " ".join(["'self'", *scripts]),
        "style-src 'self' 'unsafe-inline'", "img-src 'self' data:", "connect-src 'self'",
        "form-action 'self'", "base-uri 'none'", "object-src 'none'",
        "frame-ancestors " + " ".join(["'self'", *framers])])


PAGE_POLICY = content_security_policy()
SIDEBAR_POLICY = content_security_policy(WECOM_JS_SDK, WECOM_FRAMERS)


class SecurityHeaders:
    """nosniff and no-referrer on every response (signed links carry their signature in the query
    string: a Referer would hand it to whatever the page links to); a CSP on every HTML page. A route
    that sets its own CSP keeps it."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = SIDEBAR_POLICY if scope["path"].startswith("/sidebar") else PAGE_POLICY

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Referrer-Policy", "no-referrer")
                if headers.get("content-type", "").startswith("text/html"):
                    headers.setdefault("Content-Security-Policy", policy)
            await send(message)

        await self.app(scope, receive, send_with_headers)


# -- the server -------------------------------------------------------------------------------
class _HeadDeadline:
    """uvicorn has no header timeout: its keep-alive timer starts only after a first response, so a
    client that connects and sends half a request head holds the connection for ever. This closes a
    connection whose request has not fully arrived `head_timeout` seconds after the connection (or
    the previous response), and one whose head grows past `max_head_bytes`. A request whose app is
    still working is left alone."""

    head_timeout: float = HEAD_TIMEOUT_SECONDS
    max_head_bytes: int = MAX_HEAD_BYTES

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._waiting() == "head" and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                self._refuse(b"431 Request Header Fields Too Large")

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()          # the next request on this keep-alive connection gets its own deadline

    def _waiting(self) -> str | None:
        cycle = self.cycle
        if cycle is None:
            return "head"
        if cycle.response_complete:
            return "discard" if cycle.more_body else "head"   # answered before its body was read (413)
        return "body" if cycle.more_body else None            # None: the app is working

    def _arm(self) -> None:
        self._disarm()
        self._head_bytes = 0
        self._deadline = self.loop.call_later(self.head_timeout, self._expired)

    def _disarm(self) -> None:
        timer = getattr(self, "_deadline", None)
        if timer is not None:
            timer.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        waiting = self._waiting()
        if waiting is None or self.transport.is_closing():
            return
        if waiting == "discard":
            self.transport.close()
        else:
            self._refuse(b"408 Request Timeout")

    def _refuse(self, status: bytes) -> None:
        self.transport.write(b"HTTP/1.1 " + status + b"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        self.transport.close()


def bounded_http_protocol(head_timeout: float = HEAD_TIMEOUT_SECONDS,
                          max_head_bytes: int = MAX_HEAD_BYTES) -> type:
    """uvicorn's own protocol class (httptools when installed, else h11) with the head deadline."""
    return type("BoundedHttpProtocol", (_HeadDeadline, AutoHTTPProtocol),
                {"head_timeout": head_timeout, "max_head_bytes": max_head_bytes})


def server_options(settings, *, head_timeout: float = HEAD_TIMEOUT_SECONDS) -> dict[str, Any]:
    """uvicorn keyword arguments for `serve`: `uvicorn.run(app, host=…, port=…, **server_options(settings))`.
    `settings` is taken so the limits can become config keys without changing the call; today they
    are this module's constants."""
    return {
        "http": bounded_http_protocol(head_timeout),
        "h11_max_incomplete_event_size": MAX_HEAD_BYTES,   # the same cap when h11 is the parser
        "timeout_keep_alive": KEEP_ALIVE_SECONDS,
        "limit_concurrency": MAX_CONNECTIONS,
        # uvicorn would otherwise believe X-Forwarded-For from 127.0.0.1 on its own; the app decides,
        # by `trusted_proxies`, in one place (request_address).
        "proxy_headers": False,
        "server_header": False,
    }
