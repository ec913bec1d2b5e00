"""The bot's HTTP face. Routes translate HTTP; the callback route verifies, decrypts, stores and
answers — no WeCom call and no handler runs here (the workers do that from the stored event)."""

from __future__ import annotations

import logging
import time
from urllib.parse import parse_qsl

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bot.admin.routes import admin_router
from bot.bootstrap import Container
from bot.broadcast.sidebar import sidebar_router
from bot.broadcast.toolbar import toolbar_router
from bot.chains.routes import chain_router
from bot.funnel.qr_page import qr_router
from bot.health import check_health
from bot.logs import RateLimitedLog
from bot.web import BodyRejected, RawRoute, SecurityHeaders, read_capped, read_capped_asgi, send_text
from bot.wecom.callback import CallbackRejected

log = logging.getLogger(__name__)


def create_app(c: Container) -> FastAPI:
    app = FastAPI(title="wecom-bot", docs_url=None, redoc_url=None)
    app.state.container = c
    # The pages' scripts: a file, not inline, so the CSP can forbid inline script outright.
    app.mount("/static", StaticFiles(packages=[("bot", "static")]), name="static")

    rejections = RateLimitedLog(log, per_minute=20)   # a garbage flood must not flood the log
    unhealthy = RateLimitedLog(log, per_minute=2)     # probes ask every few seconds

    def refuse(status: int, reason: str) -> tuple[int, str]:
        c.metrics.callbacks.labels(f"rejected_{status}").inc()
        rejections.warning("callback rejected %s: %s", status, reason)
        return status, reason

    def rejected(e: CallbackRejected) -> Response:
        refuse(e.status, e.reason)
        return PlainTextResponse(e.reason, status_code=e.status)

    @app.get("/wecom/callback")
    def verify_url(msg_signature: str = "", timestamp: str = "", nonce: str = "", echostr: str = Query("")):
        try:
            return PlainTextResponse(c.verifier.verify_url(msg_signature, timestamp, nonce, echostr))
        except CallbackRejected as e:
            return rejected(e)

    stored, duplicate = c.metrics.callbacks.labels("stored"), c.metrics.callbacks.labels("duplicate")

    async def accept(msg_signature: str, timestamp: str, nonce: str, body: bytes, started: float) -> tuple[int, str]:
        """Verify, decrypt, store once: the status and text to answer. A failed store raises."""
        try:
            inbound = c.verifier.open(msg_signature, timestamp, nonce, body)
        except CallbackRejected as e:
            return refuse(e.status, e.reason)
        created = await c.recorder.record(inbound)
        (stored if created else duplicate).inc()
        c.metrics.callback_seconds.observe(time.perf_counter() - started)
        # An empty 200 is WeCom's "received": no passive reply, no retry.
        return 200, ""

    async def callback_asgi(scope, receive, send) -> None:
        # POST /wecom/callback without FastAPI's machinery (RawRoute): the same steps as the route below.
        started = time.perf_counter()
        query = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))  # last one wins
        try:
            body = await read_capped_asgi(scope, receive, c.verifier.max_body)
            status, text = await accept(query.get("msg_signature", ""), query.get("timestamp", ""),
                                        query.get("nonce", ""), body, started)
        except BodyRejected as e:
            status, text = refuse(e.status, e.reason)
        except Exception:
            # Not a 200: WeCom will redeliver, and nothing was half-stored (a batch is one transaction).
            log.exception("POST /wecom/callback failed")
            await send_text(send, 500, '{"error":"internal error"}', b"application/json")
            return
        await send_text(send, status, text)

    @app.post("/wecom/callback")
    async def callback(request: Request, msg_signature: str = "", timestamp: str = "", nonce: str = ""):
        # Served by callback_asgi; this route documents it (openapi) and answers if RawRoute is bypassed.
        started = time.perf_counter()
        try:
            body = await read_capped(request, c.verifier.max_body)
        except BodyRejected as e:
            return rejected(CallbackRejected(e.status, e.reason))
        status, text = await accept(msg_signature, timestamp, nonce, body, started)
        return PlainTextResponse(text, status_code=status)

    # The last added is the outermost: the security headers on every answer, the fast path inside them.
    app.add_middleware(RawRoute, method="POST", path="/wecom/callback", handler=callback_asgi)
    app.add_middleware(SecurityHeaders)     # nosniff, no-referrer; a CSP on every HTML page

    app.include_router(chain_router(c))
    app.include_router(sidebar_router(c))
    app.include_router(toolbar_router(c))    # /sidebar without a signature: the chat toolbar, WeCom login
    app.include_router(qr_router(c))
    app.include_router(admin_router(c))      # the ops console: WeCom login, dashboard (bot/admin)

    @app.get("/livez")
    def livez():
        # Liveness only (the process answers): a probe that restarts pods must not depend on the
        # database, or an outage restarts every web node. Also the benchmarks' reference endpoint.
        return {"status": "alive"}

    @app.get("/healthz")
    def healthz(verbose: bool = False):
        # 200 stays the bare {"status": "ok"} probes and older checks expect; `?verbose=1` shows
        # the checks (as Kubernetes' /healthz?verbose), and a 503 always says why.
        h = check_health(c.sessions, c.clock, own_process=c.heartbeat.id if c.heartbeat else None)
        if h.ok:
            return h.body() if verbose else {"status": "ok"}
        unhealthy.warning("healthz failing: %s", "; ".join(h.reasons))
        return JSONResponse(h.body(), status_code=503)

    @app.get("/metrics")
    def metrics():
        return Response(generate_latest(c.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        # Not a 200: WeCom will redeliver, and nothing was half-stored (record is one transaction).
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"error": "internal error"}, status_code=500)

    return app
