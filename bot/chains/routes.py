"""The chain page and the order API (DESIGN §3). Routes parse and map; bot.chains.service decides."""

from __future__ import annotations

import asyncio
import csv
import hmac
import io
import json
import secrets
from urllib.parse import quote

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from bot.chains.service import ChainError, csv_signature, mask_name, mask_phone, yuan
from bot.db.engine import reads_of
from bot.db.models import Chain, ChainOrder, GroupChat, Store

MAX_FORM_BYTES = 8 * 1024

env = jinja2.Environment(loader=jinja2.PackageLoader("bot", "templates"), autoescape=True)


def chain_router(c) -> APIRouter:
    r = APIRouter()
    reads = reads_of(c.sessions)
    tz = c.settings.tz

    def render(token: str, g: str, *, mine_token: str | None = None, message: str | None = None,
               ok: bool = False, status: int = 200) -> Response:
        with reads() as s:
            chain = s.scalar(select(Chain).where(Chain.token == token))
            if chain is None:
                return HTMLResponse("<!doctype html><meta charset=utf-8><p>没有这个团购。</p>", status_code=404)
            store = s.get(Store, chain.store_code)
            orders = list(s.scalars(select(ChainOrder).where(ChainOrder.chain_id == chain.id,
                                                             ChainOrder.status == "active").order_by(ChainOrder.id)))
            mine = s.scalar(select(ChainOrder).where(ChainOrder.order_token == mine_token,
                                                     ChainOrder.chain_id == chain.id)) if mine_token else None
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
        return render(token, g, mine_token=mine or None, message=error or ("报名成功！" if mine and not error else None),
                      ok=not error)

    # A few threads for the order reads, not the whole threadpool: forty runnable threads queue on the
    # GIL, and the order writer (one thread) waits behind all of them at each statement.
    check_slots = asyncio.Semaphore(2)

    def check(token: str, body: dict):
        now = c.clock.now()
        with reads() as rs:
            chain, existing, clean = c.chains.check(rs, token, now=now, name=body.get("name"),
                                                    phone_tail=body.get("phone_tail"), qty=body.get("qty"),
                                                    request_id=body.get("request_id"))
        return chain, existing, clean, now

    async def place(token: str, body: dict, g: str):
        async with check_slots:
            chain, existing, clean, now = await run_in_threadpool(check, token, body)
        if existing is not None:  # a replayed submit, answered from a read
            return {"order_token": existing.order_token, "remaining": chain.stock_left, "qty": existing.qty}, False
        return await c.order_batcher.take(chain, clean, body.get("g") or g or None, now)

    @r.post("/c/{token}/orders")
    async def order(token: str, request: Request, g: str = ""):
        raw = await request.body()
        if len(raw) > MAX_FORM_BYTES:
            return JSONResponse({"message": "请求太大。"}, status_code=413)
        is_form = "application/x-www-form-urlencoded" in request.headers.get("content-type", "")
        try:
            if is_form:
                from urllib.parse import parse_qs
                body = {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}
            else:
                body = json.loads(raw or b"{}")
                if not isinstance(body, dict):
                    raise ValueError
        except ValueError:
            return JSONResponse({"message": "请求格式不对。"}, status_code=422)
        try:
            result, created = await place(token, body, g)
        except ChainError as e:
            if is_form:
                return await run_in_threadpool(render, token, body.get("g") or g, message=e.message, status=e.status)
            return JSONResponse({"message": e.message, **e.extra}, status_code=e.status)
        if is_form:  # no JavaScript: back to the page, which shows the order (a refresh does not resubmit)
            return RedirectResponse(f"/c/{token}?g={quote(body.get('g') or g)}&mine={result['order_token']}",
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
        return RedirectResponse(f"/c/{token}?g={quote(g)}&error={quote('已取消报名。')}", status_code=303)

    @r.get("/c/{token}/orders.csv")
    def orders_csv(token: str, u: str = "", sig: str = ""):
        with reads() as s:
            chain = s.scalar(select(Chain).where(Chain.token == token))
            if chain is None:
                return Response("not found", status_code=404)
            if u != chain.clerk or not hmac.compare_digest(sig, csv_signature(c.chains.csv_key, token, u)):
                return Response("forbidden", status_code=403)
            orders = list(s.scalars(select(ChainOrder).where(ChainOrder.chain_id == chain.id).order_by(ChainOrder.id)))
            groups = {g.chat_id: g.name for g in s.scalars(select(GroupChat).where(
                GroupChat.store_code == chain.store_code))}
        out = io.StringIO()
        w = csv.writer(out)
        w.writerow(["序号", "称呼", "手机尾号", "份数", "金额(元)", "群", "报名时间", "状态"])
        for i, o in enumerate(orders, 1):
            w.writerow([i, _csv_safe(o.name), o.phone_tail, o.qty, yuan(o.qty * chain.price_cents),
                        groups.get(o.chat_id, ""), o.created_at.astimezone(tz).strftime("%m-%d %H:%M:%S"),
                        "有效" if o.status == "active" else "已取消"])
        filename = quote(f"{chain.title}-名单.csv")
        return Response("\ufeff" + out.getvalue(), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f"attachment; filename*=UTF-8''{filename}"})

    return r


def _csv_safe(value: str) -> str:
    """A name typed by a member must not become a spreadsheet formula."""
    return "'" + value if value[:1] in ("=", "+", "-", "@") else value


