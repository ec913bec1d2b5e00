"""The bot's HTTP face. Routes translate HTTP; the callback route verifies, decrypts, stores and
answers — no WeCom call and no handler runs here (the workers do that from the stored event)."""

from __future__ import annotations

import logging
import time

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
from bot.web import BodyRejected, SecurityHeaders, read_capped
from bot.wecom.callback import CallbackRejected

log = logging.getLogger(__name__)


def create_app(c: Container) -> FastAPI:
    app = FastAPI(title="wecom-bot", docs_url=None, redoc_url=None)
    app.state.container = c
    app.add_middleware(SecurityHeaders)     # nosniff, no-referrer; a CSP on every HTML page
    # The pages' scripts: a file, not inline, so the CSP can forbid inline script outright.
    app.mount("/static", StaticFiles(packages=[("bot", "static")]), name="static")

    rejections = RateLimitedLog(log, per_minute=20)   # a garbage flood must not flood the log
    unhealthy = RateLimitedLog(log, per_minute=2)     # probes ask every few seconds

    def rejected(e: CallbackRejected) -> Response:
        c.metrics.callbacks.labels(f"rejected_{e.status}").inc()
        rejections.warning("callback rejected %s: %s", e.status, e.reason)
        return PlainTextResponse(e.reason, status_code=e.status)

    @app.get("/wecom/callback")
    def verify_url(msg_signature: str = "", timestamp: str = "", nonce: str = "", echostr: str = Query("")):
        try:
            return PlainTextResponse(c.verifier.verify_url(msg_signature, timestamp, nonce, echostr))
        except CallbackRejected as e:
            return rejected(e)

    @app.post("/wecom/callback")
    async def callback(request: Request, msg_signature: str = "", timestamp: str = "", nonce: str = ""):
        started = time.perf_counter()
        try:
            body = await read_capped(request, c.verifier.max_body)
            inbound = c.verifier.open(msg_signature, timestamp, nonce, body)
        except BodyRejected as e:
            return rejected(CallbackRejected(e.status, e.reason))
        except CallbackRejected as e:
            return rejected(e)
        created = await c.recorder.record(inbound)
        c.metrics.callbacks.labels("stored" if created else "duplicate").inc()
        c.metrics.callback_seconds.observe(time.perf_counter() - started)
        # An empty 200 is WeCom's "received": no passive reply, no retry.
        return PlainTextResponse("")

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
