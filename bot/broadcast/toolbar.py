"""The chat-toolbar sidebar `GET /sidebar` (issue 15): the one URL ops configure in the WeCom admin
console as the customer-group toolbar page. Unlike the signed reminder links (bot/broadcast/sidebar.py)
it carries no signature: the member signs in with WeCom OAuth (the ops console's login, bot/admin/auth.py,
whose session cookie also rides to /sidebar), the page learns the group it is open in from the JS-SDK
(`getCurExternalChat`) and asks `GET /sidebar/group?chat_id=…` for that group's content of the current
slot (or the next one today when none is due yet). A tap sends it with `sendChatMessage` and posts
`/sidebar/group/sent` (CSRF), which records it with the signed sidebar's `mark_sent`, so `今日`, the
stats and the report count it.

A member sees the groups of the stores they may see (a clerk's stores; ops every store), whoever owns
the group: the card is rendered for the group's owner clerk, exactly as their reminder shows it."""

from __future__ import annotations

import json
import logging

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy import select, update
from starlette.concurrency import run_in_threadpool

from bot.admin.auth import AdminAuth, Viewer
from bot.broadcast.sidebar import group_card, jsapi_config, mark_sent, open_chains, public_url
from bot.db.engine import reads_of
from bot.db.models import GroupChat, SlotDelivery, Store
from bot.web import BodyRejected, read_capped

log = logging.getLogger(__name__)

env = jinja2.Environment(loader=jinja2.PackageLoader("bot", "templates"), autoescape=True)

SENDABLE = ("queued", "reminded", "sent")     # a reminder row the clerk can still send (and re-send)
CSRF_HEADER = "x-csrf-token"


def _in_wecom(request: Request) -> bool:
    return "wxwork" in request.headers.get("user-agent", "").lower()


def _json(body: dict, status: int = 200) -> JSONResponse:
    # per member and per minute: never cached by a proxy or the webview
    return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store"})


def slot_state(x: SlotDelivery | None, slot: str, now_hhmm: str, owner: str) -> tuple[bool, str]:
    """(sendable, note): may this group's card be sent from the toolbar now, and if not, why not."""
    if x is not None and x.mode == "reminder" and x.status in SENDABLE:
        return True, ""
    if x is not None and x.mode == "mass":
        if x.status == "sent":
            return False, "本时段的内容已通过群发送达本群，无需再发。"
        if x.status in ("queued", "awaiting"):
            return False, (f"本时段的内容已作为群发任务发给群主（{owner}），在企业微信「客户群群发」里确认即可发出，"
                           "不用在这里再发一次。")
        return False, f"本时段的群发没有发出（{x.reason or x.status}），请联系运营。"
    if x is not None and x.status == "paused":
        return False, "本群今天的推送已暂停（店员发了「暂停」）。发「恢复」后，下一个时段起会再推送。"
    if slot > now_hhmm:
        return False, f"下一条内容 {slot} 推送，到点后可在这里一键发送。下面先预览。"
    if x is not None and x.status == "skipped":
        return False, f"这个时段本群没有推送（{x.reason or '已跳过'}）。"
    return False, "这个时段的推送还没有开始，稍后再打开本页。"


def toolbar_router(c) -> APIRouter:
    r = APIRouter()
    reads = reads_of(c.sessions)
    tz = c.settings.tz
    # Only reads sessions here: the login itself (state, code, cookie) is /admin/login's and /admin/auth's.
    auth = AdminAuth(c.settings, c.links, c.sessions, c.client, c.clock)

    async def viewer_or_json(request: Request) -> Viewer | Response:
        v = await run_in_threadpool(auth.viewer, request)
        if not isinstance(v, Response):
            return v
        if v.status_code == 303:        # the page's script asks: a redirect to WeCom would help nobody
            return _json({"error": "登录已失效，请关闭后从客户群的聊天工具栏重新打开。"}, 401)
        if v.status_code == 403:
            return _json({"error": "你没有使用本工具的权限：只有门店店员和运营可以使用。"}, 403)
        return v

    def group_of(s, v: Viewer, chat_id: str) -> tuple[GroupChat | None, dict | None, int]:
        g = s.get(GroupChat, chat_id) if chat_id else None
        if g is None or g.dismissed_at is not None:
            return None, {"error": "这个群不是机器人管理的门店客户群（或还没有同步到）。如有疑问请联系运营。"}, 404
        if not v.may_see(g.store_code):
            return None, {"error": "这个群不属于你负责的门店，不能在这里发送它的内容。"}, 403
        return g, None, 200

    def content(v: Viewer, chat_id: str) -> tuple[dict, int]:
        now = c.clock.now()
        local = now.astimezone(tz)
        day, hhmm = local.date(), local.strftime("%H:%M")
        c.calendar.reload_if_changed()
        with reads() as s:
            g, refused, status = group_of(s, v, chat_id)
            if g is None:
                return refused, status
            st = s.get(Store, g.store_code)
            rows = {x.slot: x for x in s.scalars(select(SlotDelivery).where(
                SlotDelivery.day == day.isoformat(), SlotDelivery.chat_id == chat_id))}
            chains = open_chains(s, [g.store_code], now)
        head = {"group": {"chat_id": g.chat_id, "name": g.name or g.chat_id},
                "store": {"code": g.store_code, "name": st.name if st else g.store_code}}
        plan = c.calendar.day(g.store_code, day) if st is not None else {}
        slots = [slot for slot in c.calendar.slots if slot in plan]
        due = [slot for slot in slots if slot <= hhmm]
        upcoming = [slot for slot in slots if slot > hhmm]
        slot = due[-1] if due else (upcoming[0] if upcoming else None)
        if slot is None:
            return {**head, "slot": None, "card": None, "sendable": False,
                    "note": "今天没有给这个群安排内容。"}, 200
        x = rows.get(slot)
        owner = x.owner if x is not None else g.owner
        card = group_card(c, day, slot, owner, chat_id, g, st, chains, x)
        if card is None:      # the calendar changed since the slot was planned
            return {**head, "slot": slot, "card": None, "sendable": False,
                    "note": "这个时段的内容已从日历中撤下。"}, 200
        sendable, note = slot_state(x, slot, hhmm, owner)
        if card.get("broken"):
            sendable, note = False, ""
        if sendable and x.opened_at is None:
            mark_opened(x.id)
        return {**head, "day": day.isoformat(), "slot": slot, "title": f"{day.month}月{day.day}日 {slot}",
                "card": card, "sendable": sendable and not card["sent"], "note": note}, 200

    def mark_opened(row_id: int) -> None:
        with c.sessions.begin() as s:
            s.execute(update(SlotDelivery).where(SlotDelivery.id == row_id, SlotDelivery.opened_at.is_(None))
                      .values(opened_at=c.clock.now()))

    def record_tap(v: Viewer, chat_id: str, day: str, slot: str) -> tuple[dict, int]:
        try:
            expires = c.sidebar_links.expires_at(day)
        except ValueError:
            return {"error": "请求格式不对"}, 422
        if c.clock.now() >= expires:
            return {"error": "这个时段已经过去太久，不能再记录。请重新打开本页。"}, 410
        with reads() as s:
            g, refused, status = group_of(s, v, chat_id)
            if g is None:
                return refused, status
            x = s.scalar(select(SlotDelivery).where(SlotDelivery.day == day, SlotDelivery.slot == slot,
                                                    SlotDelivery.chat_id == chat_id))
        if x is None or not mark_sent(c, day, slot, x.owner, chat_id):
            return {"error": "这个群在本时段没有待发送的提醒。"}, 404
        log.info("toolbar sidebar: %s sent %s %s to %s (owner %s)", v.userid, day, slot, chat_id, x.owner)
        return {"ok": True, "tapped_at": c.clock.now().astimezone(tz).strftime("%H:%M")}, 200

    @r.get("/sidebar")
    async def page(request: Request):
        wecom = _in_wecom(request)
        v = await run_in_threadpool(auth.viewer, request)
        if isinstance(v, Response):
            if v.status_code == 303 and not wecom:
                # A plain browser: nothing to show without a customer group; say where the page lives.
                return HTMLResponse(env.get_template("toolbar.html").render(
                    outside=True, signed_in=False, csrf="", js=None, wecom=False, userid=""))
            return v      # inside WeCom: to /admin/login and WeCom's OAuth, back here
        js = await run_in_threadpool(jsapi_config, c, public_url(c, request)) if wecom else None
        return HTMLResponse(env.get_template("toolbar.html").render(
            outside=not wecom, signed_in=True, csrf=v.csrf, js=js, wecom=wecom, userid=v.userid),
            headers={"Cache-Control": "no-store"})

    @r.get("/sidebar/group")
    async def group(request: Request, chat_id: str = ""):
        v = await viewer_or_json(request)
        if isinstance(v, Response):
            return v
        body, status = await run_in_threadpool(content, v, chat_id[:64])
        return _json(body, status)

    @r.post("/sidebar/group/sent")
    async def sent(request: Request):
        """The member sent the card into the group (every sendChatMessage answered ok)."""
        v = await viewer_or_json(request)
        if isinstance(v, Response):
            return v
        try:
            raw = await read_capped(request, c.settings.pages.max_body_bytes or 8192)
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError
        except BodyRejected as e:
            return _json({"error": "请求太大"}, e.status)
        except ValueError:
            return _json({"error": "请求格式不对"}, 422)
        if not auth.csrf_ok(v, request.headers.get(CSRF_HEADER) or str(body.get("csrf") or "")):
            return _json({"error": "页面已失效（CSRF 校验失败），请重新打开本页。"}, 403)
        chat_id, day, slot = (str(body.get(k) or "")[:64] for k in ("chat_id", "day", "slot"))
        if not (chat_id and day and len(slot) == 5):
            return _json({"error": "请求格式不对"}, 422)
        result, status = await run_in_threadpool(record_tap, v, chat_id, day, slot)
        return _json(result, status)

    return r

