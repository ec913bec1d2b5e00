"""The sidebar page (`/sidebar/…`): opened from a clerk's slot reminder or from the chat toolbar of a
customer group; shows this slot's content for each of the clerk's groups, ready to send with one tap
(JS-SDK sendChatMessage after wx.config and wx.agentConfig, signed with the jsapi tickets). Links are
signed per (day, slot, clerk): a clerk sees their own groups only. The unsigned chat-toolbar page
`/sidebar` (bot/broadcast/toolbar.py, WeCom login) shares the card, JS-SDK and tap functions at the end."""

from __future__ import annotations

import logging
import secrets
from datetime import date, datetime, time, timedelta

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import select, update
from starlette.concurrency import run_in_threadpool
from wechatpy.utils import WeChatSigner

from bot.broadcast.dispatch import chain_view
from bot.db.engine import reads_of
from bot.db.models import Chain, GroupChat, SlotDelivery, Store
from bot.links import SIDEBAR, SIDEBAR_CHAIN, LinkSigner, Verdict, refusal
from bot.media import attachment_body
from bot.text import yuan
from bot.wecom.client import WeComError

log = logging.getLogger(__name__)

env = jinja2.Environment(loader=jinja2.PackageLoader("bot", "templates"), autoescape=True)


def jsapi_signature(ticket: str, noncestr: str, timestamp: int, url: str) -> str:
    """sha1 over jsapi_ticket, noncestr, timestamp and url (the page URL without #), WeCom's JS-SDK rule."""
    signer = WeChatSigner(delimiter=b"&")
    signer.add_data(f"jsapi_ticket={ticket}", f"noncestr={noncestr}", f"timestamp={timestamp}", f"url={url}")
    return signer.signature


class SidebarLinks:
    """Mints and checks the clerk's sidebar links. A slot's link works until the end of its day in the
    bot's time zone + grace (a clerk sends the evening slot late); a chain's until its deadline + grace."""

    # For a caller that does not pass the chain's deadline: chains run days, not weeks.
    CHAIN_FALLBACK = timedelta(days=14)

    def __init__(self, public_base_url: str, signer: LinkSigner, tz, grace_hours: int):
        self.base = public_base_url.rstrip("/")
        self.signer = signer
        self.tz = tz
        self.grace = timedelta(hours=grace_hours)

    def expires_at(self, day: str) -> datetime:
        return datetime.combine(date.fromisoformat(day) + timedelta(days=1), time(), self.tz) + self.grace

    def sig(self, day: str, hhmm: str, clerk: str) -> str:
        return self.signer.sign(SIDEBAR, (day, hhmm, clerk), self.expires_at(day))

    def path(self, day: date | str, slot: str, clerk: str) -> str:
        d = day if isinstance(day, str) else day.isoformat()
        hhmm = slot.replace(":", "")
        return f"/sidebar/{d}/{hhmm}/{clerk}?sig={self.sig(d, hhmm, clerk)}"

    def link(self, day: date | str, slot: str, clerk: str) -> str:
        return self.base + self.path(day, slot, clerk)

    def check(self, day: str, hhmm: str, clerk: str, sig: str) -> Verdict:
        return self.signer.verify(SIDEBAR, (day, hhmm, clerk), sig)

    def valid(self, day: str, hhmm: str, clerk: str, sig: str) -> bool:
        return self.check(day, hhmm, clerk, sig) is Verdict.OK

    def chain_link(self, token: str, clerk: str, deadline: datetime | None = None) -> str:
        """The announcement of a new group-buy, ready for each of the clerk's groups."""
        expires = (deadline + self.grace) if deadline else self.signer.clock.now() + self.CHAIN_FALLBACK
        return f"{self.base}/sidebar/chain/{token}/{clerk}?sig={self.signer.sign(SIDEBAR_CHAIN, (token, clerk), expires)}"

    def check_chain(self, token: str, clerk: str, sig: str) -> Verdict:
        return self.signer.verify(SIDEBAR_CHAIN, (token, clerk), sig)


def sidebar_router(c) -> APIRouter:
    r = APIRouter()
    reads = reads_of(c.sessions)
    links: SidebarLinks = c.sidebar_links
    tz = c.settings.tz

    def refused(verdict: Verdict, expired: str = "链接已过期，请从最新的提醒消息打开。") -> Response:
        return refusal(verdict, expired=expired, bad="链接无效，请从最新的提醒消息打开。")

    def groups_for(day: str, slot: str, clerk: str) -> list[tuple[SlotDelivery, GroupChat | None]]:
        with reads() as s:
            rows = list(s.scalars(select(SlotDelivery).where(
                SlotDelivery.day == day, SlotDelivery.slot == slot, SlotDelivery.owner == clerk,
                SlotDelivery.mode == "reminder", SlotDelivery.status.in_(("queued", "reminded", "sent")))
                .order_by(SlotDelivery.chat_id)))
            names = {g.chat_id: g for g in s.scalars(select(GroupChat).where(
                GroupChat.chat_id.in_([x.chat_id for x in rows])))}
        return [(x, names.get(x.chat_id)) for x in rows]

    def jsapi(url: str) -> dict | None:
        return jsapi_config(c, url)

    def page_url(request: Request) -> str:
        return public_url(c, request)

    def build(day: str, slot: str, clerk: str, url: str, wecom: bool) -> dict:
        d = date.fromisoformat(day)
        rows = groups_for(day, slot, clerk)
        c.calendar.reload_if_changed()
        cards = []
        with reads() as s:
            stores = {x.store_code for x, _ in rows}
            store_rows = {st.code: st for st in s.scalars(select(Store).where(Store.code.in_(stores)))}
            chains = open_chains(s, stores, c.clock.now())
        for x, g in rows:
            st = store_rows.get(x.store_code)
            card = group_card(c, d, slot, clerk, x.chat_id, g, st, chains, x) if st is not None else None
            if card is not None:
                cards.append(card)
        return {"title": f"{d.month}月{d.day}日 {slot}", "cards": cards, "js": jsapi(url), "wecom": wecom}

    def build_chain(token: str, clerk: str, url: str, wecom: bool) -> dict | None:
        with reads() as s:
            chain = s.scalar(select(Chain).where(Chain.token == token))
            if chain is None:
                return None
            groups = list(s.scalars(select(GroupChat).where(GroupChat.store_code == chain.store_code,
                                                            GroupChat.owner == clerk).order_by(GroupChat.chat_id)))
        cards = [{"chat_id": g.chat_id, "name": g.name or g.chat_id, "kind": "团购接龙", "attachments": [],
                  "sent": False, "tapped_at": "", "text": chain_announcement(c.chains, chain, tz, g.chat_id)}
                 for g in groups]
        return {"title": f"团购 #{chain.id} {chain.title}", "cards": cards, "js": jsapi(url), "wecom": wecom}

    @r.get("/sidebar/chain/{token}/{clerk}")
    async def chain_page(token: str, clerk: str, request: Request, sig: str = ""):
        verdict = links.check_chain(token, clerk, sig)
        if verdict is not Verdict.OK:
            return refused(verdict, "链接已过期：这个团购已经截止。开新团购请给机器人发“开团”。")
        wecom = "wxwork" in request.headers.get("user-agent", "").lower()
        data = await run_in_threadpool(build_chain, token, clerk, page_url(request), wecom)
        if data is None:
            return HTMLResponse("<!doctype html><meta charset=utf-8><p>没有这个团购。</p>", status_code=404)
        return HTMLResponse(env.get_template("sidebar.html").render(**data, sent_url=None, done=""))

    # after the chain route: /sidebar/chain/… would match this one too
    @r.get("/sidebar/{day}/{hhmm}/{clerk}")
    async def page(day: str, hhmm: str, clerk: str, request: Request, sig: str = "", done: str = ""):
        verdict = links.check(day, hhmm, clerk, sig)
        if verdict is not Verdict.OK or len(hhmm) != 4:
            return refused(verdict)
        slot = f"{hhmm[:2]}:{hhmm[2:]}"
        wecom = "wxwork" in request.headers.get("user-agent", "").lower()
        data = await run_in_threadpool(build, day, slot, clerk, page_url(request), wecom)
        await run_in_threadpool(mark_opened, day, slot, clerk)
        html = env.get_template("sidebar.html").render(
            **data, sent_url=links.path(day, slot, clerk).replace("?", "/sent?"), done=done)
        return HTMLResponse(html)

    def mark_opened(day: str, slot: str, clerk: str) -> None:
        with c.sessions.begin() as s:
            s.execute(update(SlotDelivery).where(
                SlotDelivery.day == day, SlotDelivery.slot == slot, SlotDelivery.owner == clerk,
                SlotDelivery.mode == "reminder", SlotDelivery.opened_at.is_(None)).values(opened_at=c.clock.now()))

    @r.post("/sidebar/{day}/{hhmm}/{clerk}/sent")
    async def sent(day: str, hhmm: str, clerk: str, request: Request, sig: str = ""):
        """The clerk sent a group's content (sendChatMessage answered ok, or tapped 已发送 by hand)."""
        verdict = links.check(day, hhmm, clerk, sig)
        if verdict is not Verdict.OK:
            return refused(verdict)   # the page's script reloads on any answer: the reload shows why
        slot = f"{hhmm[:2]}:{hhmm[2:]}"
        is_json = request.headers.get("content-type", "").startswith("application/json")
        try:
            body = await request.json() if is_json else dict(await request.form())
        except ValueError:
            return JSONResponse({"error": "请求格式不对"}, status_code=400)
        chat_id = str(body.get("chat_id") or "")
        ok = await run_in_threadpool(mark_sent, c, day, slot, clerk, chat_id)
        if is_json:
            return JSONResponse({"ok": ok} if ok else {"error": "这个群不在本时段的提醒里"}, status_code=200 if ok else 404)
        return RedirectResponse(links.path(day, slot, clerk) + "&done=" + chat_id, status_code=303)

    return r


# -- shared with the chat-toolbar sidebar (bot/broadcast/toolbar.py) -----------------------------
def jsapi_config(c, url: str) -> dict | None:
    """What wx.config and wx.agentConfig need for the page at `url`, or None when WeCom gives no
    ticket (the page still works: copy the text by hand)."""
    try:
        ts, nonce = int(c.clock.timestamp()), secrets.token_hex(8)
        return {"corpid": c.settings.wecom.corp_id, "agentid": c.settings.wecom.agent_id, "timestamp": ts,
                "nonceStr": nonce, "signature": jsapi_signature(c.client.corp_ticket(), nonce, ts, url),
                "agentSignature": jsapi_signature(c.client.agent_ticket(), nonce, ts, url)}
    except WeComError:
        return None


def public_url(c, request: Request) -> str:
    """The page's URL as the browser has it behind the proxy: what the JS-SDK signature covers."""
    return c.settings.public_base_url.rstrip("/") + request.url.path + (
        f"?{request.url.query}" if request.url.query else "")


def open_chains(s, stores, now: datetime) -> list[Chain]:
    """The stores' group-buys running now: what a template's `chains` lists."""
    return list(s.scalars(select(Chain).where(Chain.store_code.in_(stores), Chain.status == "open",
                                              Chain.opens_at <= now, Chain.deadline > now)))


def group_card(c, d: date, slot: str, clerk: str, chat_id: str, g: GroupChat | None, st: Store,
               chains: list[Chain], x: SlotDelivery | None) -> dict | None:
    """One group's card: the slot's content rendered for that group (as the owner clerk's reminder
    shows it), its attachments ready for sendChatMessage; None when the calendar has nothing then."""
    entry = c.calendar.day(st.code, d).get(slot)
    if entry is None:
        return None
    tz = c.settings.tz
    name = g.name if g and g.name else chat_id
    ctx = c.calendar.context(
        store={"code": st.code, "name": st.name, "benefit": st.benefit or ""}, clerk=clerk, day=d, slot=slot,
        chains=[chain_view(c.chains, ch, tz, chat_id) for ch in chains if ch.store_code == st.code],
        group={"chat_id": chat_id, "name": name})
    try:
        rendered = c.calendar.render(entry, ctx)
    except jinja2.TemplateError as e:   # live data the check could not foresee: this card only
        log.error("sidebar %s %s %s: template fails for group %s (%s)", d, slot, clerk, chat_id, e)
        return {"chat_id": chat_id, "name": name, "kind": entry.kind_zh,
                "text": "（这条内容的模板出错了，暂时不能发送，请联系运营检查日历）", "attachments": [],
                "sent": False, "broken": True, "tapped_at": ""}
    attachments = []
    for a in rendered.attachments:
        try:
            attachments.append(attachment_body(a, c.media, c.calendar))
        except (WeComError, OSError):
            attachments.append({"msgtype": "unavailable"})
    sent = x is not None and x.status == "sent"
    return {"chat_id": chat_id, "name": name, "kind": entry.kind_zh, "text": rendered.text,
            "attachments": attachments, "sent": sent,
            "tapped_at": x.tapped_at.astimezone(tz).strftime("%H:%M") if x is not None and x.tapped_at else ""}


def mark_sent(c, day: str, slot: str, clerk: str, chat_id: str) -> bool:
    """The owner's reminder row of (day, slot, group) is sent: the tap `今日`, stats and the report count."""
    now = c.clock.now()
    with c.sessions.begin() as s:
        res = s.execute(update(SlotDelivery).where(
            SlotDelivery.day == day, SlotDelivery.slot == slot, SlotDelivery.owner == clerk,
            SlotDelivery.chat_id == chat_id, SlotDelivery.mode == "reminder",
            SlotDelivery.status.in_(("queued", "reminded", "sent")))
            .values(status="sent", tapped_at=now, sent_at=now).returning(SlotDelivery.id))
        return bool(res.all())


def chain_announcement(chains, chain: Chain, tz, chat_id: str | None) -> str:
    """What a clerk posts in a group to open a chain: the group's own link attributes its orders."""
    return (f"【团购接龙】{chain.title} ¥{yuan(chain.price_cents)}，限量{chain.stock_total}份，"
            f"每人限{chain.per_person_limit}份，{chain.deadline.astimezone(tz):%m月%d日 %H:%M}截止。\n"
            f"点链接报名：{chains.link(chain, chat_id)}")
