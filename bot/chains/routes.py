"""The chain page and the order API (DESIGN §3). Routes parse and map; bot.chains.service decides."""

from __future__ import annotations

import csv
import io
import math
import secrets
from urllib.parse import quote

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from bot.chains.service import ASCII_TOKEN, ORDER_STATUS_ZH, ChainError, SignUp, clean_chat_id, clean_sign_up
from bot.text import mask_name, mask_phone, yuan
from bot.db.engine import reads_of
from bot.db.models import Chain, ChainOrder, GroupChat, Store
from bot.links import Verdict, refusal
from bot.ratelimit import RateLimiter
from bot.web import address_key, read_member_body, request_address, trusted_networks

# What `?error=` may say: a code, shown as its fixed text (ok: shown as good news). Anything else
# shows nothing: a crafted link in a group must not put its words on our page.
NOTES = {"cancelled": ("已取消报名。", True)}
RATE_LIMITED = "提交太频繁了，请过一分钟再试。"

env = jinja2.Environment(loader=jinja2.PackageLoader("bot", "templates"), autoescape=True)


# The order body as the route reads it (by hand, to cap it while streaming and to take JSON or a form):
# declared here so /openapi.json says what it takes and a fuzzer sends real bodies.
ORDER_BODY = {"type": "object", "required": ["name", "phone_tail", "qty", "request_id"], "properties": {
    "name": {"type": "string", "minLength": 1, "maxLength": 20, "description": "称呼, printable text"},
    "phone_tail": {"type": "string", "pattern": "^[0-9]{4}$"},
    "qty": {"type": "integer", "minimum": 1},
    "request_id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{8,64}$", "description": "same id = same order"},
    "g": {"type": "string", "pattern": "^[A-Za-z0-9_-]{0,64}$", "description": "the group's chat_id"}}}
ORDER_OPENAPI = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": ORDER_BODY}, "application/x-www-form-urlencoded": {"schema": ORDER_BODY}}}}
ORDER_RESPONSES = {
    200: {"description": "the same request_id again: the order it placed"},
    201: {"description": "placed: {order_token, remaining}"},
    303: {"description": "form post: back to the page, showing the order"},
    404: {"description": "no such chain"},
    409: {"description": "sold out, over the per-person limit, or request_id reused by another buyer"},
    410: {"description": "closed"},
    413: {"description": "body over pages.max_body_bytes"},
    422: {"description": "a field is not what it must be"},
    429: {"description": "too many sign-ups from this address or buyer; Retry-After"},
}


def chain_router(c) -> APIRouter:
    r = APIRouter()
    reads = reads_of(c.sessions)
    tz = c.settings.tz
    pages = c.settings.pages
    trusted = trusted_networks(c.settings.trusted_proxies)
    # A whole group often shares one carrier-NAT address: tight per buyer within an address, loose per address.
    per_buyer = RateLimiter(pages.orders_per_buyer_per_minute, c.clock)
    per_address = RateLimiter(pages.orders_per_address_per_minute, c.clock)

    def render(token: str, g: str, *, mine_token: str | None = None, message: str | None = None,
               ok: bool = False, status: int = 200, just_placed: bool = False) -> Response:
        g = g if ASCII_TOKEN.fullmatch(g or "") else ""          # only a real chat id goes back into the page
        mine_token = mine_token if ASCII_TOKEN.fullmatch(mine_token or "") else None
        with reads() as s:
            chain = s.scalar(select(Chain).where(Chain.token == token)) if ASCII_TOKEN.fullmatch(token) else None
            if chain is None:
                return HTMLResponse("<!doctype html><meta charset=utf-8><p>没有这个团购。</p>", status_code=404)
            store = s.get(Store, chain.store_code)
            orders = list(s.scalars(select(ChainOrder).where(ChainOrder.chain_id == chain.id,
                                                             ChainOrder.status == "active").order_by(ChainOrder.id)))
            mine = s.scalar(select(ChainOrder).where(ChainOrder.order_token == mine_token,
                                                     ChainOrder.chain_id == chain.id)) if mine_token else None
        if just_placed and mine is not None and mine.status == "active":   # back from a sign-up
            message, ok = "报名成功！", True
        now = c.clock.now()
        is_open = chain.status == "open" and now < chain.deadline
        html = env.get_template("chain.html").render(
            chain=chain, price=yuan(chain.price_cents), store_name=store.name if store else "", open=is_open,
            deadline_text=chain.deadline.astimezone(tz).strftime("%m-%d %H:%M"),
            deadline_ts=int(chain.deadline.timestamp()),
            closed_text="已截单" if chain.status == "closed" or now >= chain.deadline else "",
            orders=orders, mine=mine, mine_name=mask_name(mine.name) if mine else "", g=g or "",
            request_id=secrets.token_urlsafe(12), message=message, ok=ok, mask=mask_name, mask_phone=mask_phone)
        return HTMLResponse(html, status_code=status)

    @r.get("/c/{token}")
    def page(token: str, g: str = "", mine: str = "", error: str = ""):
        message, ok = NOTES.get(error, (None, False))
        return render(token, g, mine_token=mine or None, message=message, ok=ok, just_placed=not message)

    async def place(token: str, body: dict, chat_id: str | None):
        clean = clean_sign_up(token, body.get("name"), body.get("phone_tail"), body.get("qty"), body.get("request_id"))
        # The order writer checks (one read for all waiting) and takes: no thread hop per sign-up.
        return await c.order_batcher.take(SignUp(token, clean, chat_id, c.clock.now()))

    def too_often(request: Request, body: dict) -> float:
        """Seconds to wait, 0 when allowed. Every submit counts once, a replayed request_id too: an
        honest retry costs what a new sign-up costs, never more, and six a minute leave room for it."""
        address = address_key(request_address(request, trusted))
        return per_address.hit(address) or per_buyer.hit((address, _key_part(body.get("name")),
                                                          _key_part(body.get("phone_tail"))))

    class OrderASGI:
        """POST /c/{token}/orders as a bare ASGI app, listed before the documented route below: a
        sign-up rush was mostly FastAPI's own per-request cost (dependency solving, its Request and
        response wrapping). Starlette's Route calls an object that is not a function as ASGI as is."""

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            request = Request(scope, receive)
            response = await order(scope["path_params"]["token"], request, request.query_params.get("g", ""))
            await response(scope, receive, send)

    r.add_route("/c/{token}/orders", OrderASGI(), methods=["POST"], include_in_schema=False)

    # Served by OrderASGI; this route documents it (openapi) and answers if it is ever bypassed.
    @r.post("/c/{token}/orders", openapi_extra=ORDER_OPENAPI, responses=ORDER_RESPONSES)
    async def order(token: str, request: Request, g: str = ""):
        read = await read_member_body(request, pages.max_body_bytes)
        if isinstance(read, JSONResponse):
            return read
        body, is_form = read
        chat = body.get("g") or g
        wait = too_often(request, body)
        if wait:
            retry = {"Retry-After": str(math.ceil(wait))}
            if is_form:
                page = await run_in_threadpool(render, token, chat, message=RATE_LIMITED, status=429)
                page.headers.update(retry)
                return page
            return JSONResponse({"message": RATE_LIMITED, "error": "rate_limited"}, status_code=429, headers=retry)
        try:
            chat_id = clean_chat_id(chat)
            result, created = await place(token, body, chat_id)
        except ChainError as e:
            if is_form:
                return await run_in_threadpool(render, token, chat, message=e.message, status=e.status)
            return JSONResponse({"message": e.message, **e.extra}, status_code=e.status)
        if is_form:  # no JavaScript: back to the page, which shows the order (a refresh does not resubmit)
            return RedirectResponse(f"/c/{token}?g={quote(chat_id or '')}&mine={result['order_token']}",
                                    status_code=303)
        return JSONResponse(result, status_code=201 if created else 200)

    def cancel(token: str, order_token: str) -> int:
        with c.sessions.begin() as s:
            return c.chains.cancel(s, token, order_token, c.clock.now())

    @r.delete("/c/{token}/orders/{order_token}")
    async def delete_order(token: str, order_token: str):
        try:
            left = await run_in_threadpool(cancel, token, order_token)
        except ChainError as e:
            return JSONResponse({"message": e.message, **e.extra}, status_code=e.status)
        return JSONResponse({"remaining": left, "message": "已取消报名。"})

    @r.post("/c/{token}/orders/{order_token}/cancel")
    async def cancel_form(token: str, order_token: str, g: str = ""):
        try:
            await run_in_threadpool(cancel, token, order_token)
        except ChainError as e:
            return await run_in_threadpool(render, token, g, mine_token=order_token, message=e.message, status=e.status)
        g = g if ASCII_TOKEN.fullmatch(g) else ""
        return RedirectResponse(f"/c/{token}?g={quote(g)}&error=cancelled", status_code=303)

    @r.get("/c/{token}/orders.csv")
    def orders_csv(token: str, u: str = "", sig: str = ""):
        bad = "链接无效，请从机器人发来的最新消息打开。"
        verdict = c.chains.check_csv(token, u, sig)   # before any read: a bad link learns nothing
        if verdict is Verdict.BAD:
            return refusal(verdict, bad=bad)
        with reads() as s:
            chain = s.scalar(select(Chain).where(Chain.token == token))
            if chain is None:   # signed, so once ours: a chain removed since
                return HTMLResponse("<!doctype html><meta charset=utf-8><p>没有这个团购。</p>", status_code=404)
            if u != chain.clerk:
                return refusal(Verdict.BAD, bad=bad)
            if verdict is Verdict.EXPIRED:
                return refusal(verdict, expired=f"这个名单链接已过期。请在企业微信里给机器人发“名单 {chain.id}”，"
                                                f"获取最新名单。")
            orders = list(s.scalars(select(ChainOrder).where(ChainOrder.chain_id == chain.id).order_by(ChainOrder.id)))
            groups = {g.chat_id: g.name for g in s.scalars(select(GroupChat).where(
                GroupChat.store_code == chain.store_code))}
        out = io.StringIO()
        w = csv.writer(out)
        w.writerow(["序号", "称呼", "手机尾号", "份数", "金额(元)", "群", "报名时间", "状态"])
        for i, o in enumerate(orders, 1):
            w.writerow([i, _csv_safe(o.name), o.phone_tail, o.qty, yuan(o.qty * chain.price_cents),
                        groups.get(o.chat_id, ""), o.created_at.astimezone(tz).strftime("%m-%d %H:%M:%S"),
                        ORDER_STATUS_ZH.get(o.status, o.status)])
        filename = quote(f"{chain.title}-名单.csv")
        return Response("\ufeff" + out.getvalue(), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f"attachment; filename*=UTF-8''{filename}"})

    return r


def _key_part(value) -> str:
    """A rate-limit key part as typed, bounded: a key must not cost what a body may carry."""
    return value.strip().lower()[:32] if isinstance(value, str) else type(value).__name__


def _csv_safe(value: str) -> str:
    """A name typed by a member must not become a spreadsheet formula."""
    return "'" + value if value[:1] in ("=", "+", "-", "@") else value


