"""The group-QR page a welcome links to (DESIGN §3 /q/{token}, issue 14): the store's group QR as it
is at WeCom now, how to join, and 「扫码进不了群？告诉店员」. Works without JavaScript. Opening it is
the funnel's `viewed` step; a report raises the alarm (bot.funnel.reports)."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from bot.db.engine import reads_of
from bot.db.models import Store
from bot.funnel.reports import page_add, record_report, record_view
from bot.links import LinkSigner, Verdict, refusal
from bot.web import read_member_body
from bot.wecom.client import WeComError

log = logging.getLogger(__name__)

env = jinja2.Environment(loader=jinja2.PackageLoader("bot", "templates"), autoescape=True)
QR_CACHE_SECONDS = 60.0    # the QR image read from WeCom at most once a minute per store
LINK_TITLE = "点此进群（二维码打不开点这里）"
EXPIRED = "这个进群链接已过期，请直接联系店员拉你进群。"
BAD = "进群链接无效，请直接联系店员拉你进群。"


class QrPages:
    """The /q/{token} link of one add: signed, naming the store and the add, expiring after
    pages.qr_link_days."""

    def __init__(self, public_base_url: str, links: LinkSigner, clock, days: int):
        self.base = public_base_url.rstrip("/")
        self.links = links
        self.clock = clock
        self.days = days

    def url(self, store_code: str, add_id: int | str) -> str:
        token = self.links.sign_qr(store_code, str(add_id), self.clock.now() + timedelta(days=self.days))
        return f"{self.base}/q/{token}"

    def attachment(self, store_code: str, add_id: int | str) -> dict:
        """The welcome's link attachment (msgtype link: title and url are WeCom's required fields)."""
        return {"msgtype": "link", "link": {"title": LINK_TITLE, "url": self.url(store_code, add_id),
                                            "desc": "长按识别群二维码进群；进不了群可以在页面上告诉店员"}}


class QrImages:
    """The store's current group QR image, from get_join_way's qr_code (never a stale upload), kept
    a minute per store so a group opening the page at once is one WeCom read."""

    def __init__(self, client, clock):
        self.client = client
        self.clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, bytes]] = {}

    def png(self, store: Store) -> bytes | None:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(store.code)
        if hit and now - hit[0] < QR_CACHE_SECONDS:
            return hit[1]
        if not store.join_way_config_id:
            return None
        try:
            url = self.client.join_way.get_join_way(store.join_way_config_id).get("qr_code") or store.join_way_qr_code
            data = self.client.fetch_url(url) if url else None
        except WeComError as e:
            log.warning("qr page %s: group QR not read (%s)", store.code, e)
            return hit[1] if hit else None   # a minute-old image beats none
        if data:
            with self._lock:
                self._cache[store.code] = (now, data)
        return data


def qr_router(c) -> APIRouter:
    r = APIRouter()
    reads = reads_of(c.sessions)
    images = QrImages(c.client, c.clock)

    def verified(token: str):
        verdict, subject = c.links.verify_qr(token)
        if verdict is not Verdict.OK:
            return None, refusal(verdict, expired=EXPIRED, bad=BAD)
        with reads() as s:
            add = page_add(s, *subject)
            store = s.get(Store, subject[0]) if add else None
        if add is None or store is None:
            return None, refusal(Verdict.BAD, bad=BAD)
        return (add, store), None

    def render(token: str, add, store: Store, *, reported: bool, status: int = 200) -> HTMLResponse:
        html = env.get_template("qr.html").render(
            token=token, store_name=store.name, clerk_name=c.content.clerk_name(add.userid),
            has_qr=bool(store.join_way_config_id), reported=reported)
        return HTMLResponse(html, status_code=status)

    def view(token: str) -> Response:
        found, refused = verified(token)
        if refused:
            return refused
        add, store = found
        with c.sessions.begin() as s:
            record_view(s, add, c.clock.now())
        return render(token, add, store, reported=False)

    @r.get("/q/{token}", response_class=HTMLResponse)
    async def page(token: str):
        return await run_in_threadpool(view, token)

    def image(token: str) -> Response:
        found, refused = verified(token)
        if refused:
            return refused
        data = images.png(found[1])
        if data is None:
            return Response(status_code=404)
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=60"})

    @r.get("/q/{token}/qr.png")
    async def qr_png(token: str):
        return await run_in_threadpool(image, token)

    def report(token: str, reason: str) -> tuple[Response | None, tuple | None]:
        found, refused = verified(token)
        if refused:
            return refused, None
        add, store = found
        with c.sessions.begin() as s:
            record_report(s, c.qr_health, c.clock, add, reason, c.clock.now(), c.settings.tz)
        c.doorbell.ring()   # the alert, if it opened one, goes now
        return None, found

    @r.post("/q/{token}/report", status_code=202, responses={
        202: {"description": "heard: a thank-you (HTML for a form post, JSON otherwise)"},
        403: {"description": "a bad link"}, 410: {"description": "an expired link"},
        413: {"description": "body over pages.max_body_bytes"}, 422: {"description": "not a form or JSON object"}},
        openapi_extra={"requestBody": {"required": False, "content": {
            "application/json": {"schema": REPORT_BODY}, "application/x-www-form-urlencoded": {"schema": REPORT_BODY}}}})
    async def report_route(token: str, request: Request):
        read = await read_member_body(request, c.settings.pages.max_body_bytes)
        if isinstance(read, JSONResponse):
            return read
        body, is_form = read
        reason = body.get("reason") if isinstance(body.get("reason"), str) else "other"
        refused, found = await run_in_threadpool(report, token, reason)
        if refused:
            return refused
        add, store = found
        if is_form:
            return await run_in_threadpool(render, token, add, store, reported=True, status=202)
        clerk = c.content.clerk_name(add.userid)
        return JSONResponse({"message": f"谢谢你告诉我们！{clerk}已收到，会尽快拉你进群。", "clerk": clerk},
                            status_code=202)

    return r


REPORT_BODY = {"type": "object", "properties": {
    "reason": {"type": "string", "enum": ["error", "full", "other"],
               "description": "error 系统错误/二维码失效, full 群已满, other"}}}
