"""Who is looking at /admin, and the WeCom login that tells us (DESIGN §3, issue 15).

- `GET /admin/login` sends the browser to WeCom: inside the WeCom client (user agent `wxwork`) the
  OAuth authorize URL (`scope=snsapi_base`, doc 91022), elsewhere the web login (扫码登录,
  `login_type=CorpApp`, doc 91025). Both come back to `GET /admin/auth?code&state`, which asks
  `auth/getuserinfo` (doc 91023) through the one client for the member's userid.
- `state` is random, held in a signed cookie bound to this browser, lives 10 minutes and is used
  once (the cookie is dropped, and this process remembers the states it accepted).
- The session is a signed cookie (the LinkSigner keys: admin_token signs, link_keys verify) with an
  absolute expiry read on the injected clock, `HttpOnly`, `SameSite=Lax`, `Secure` on https. It
  carries a CSRF token every POST must echo.
- Scope is decided on every request from the current config and roster: `ops_userids` see every
  store, a clerk the stores whose `clerks` name them, anyone else a Chinese 403 page.
  `Authorization: Bearer <admin_token>` sees everything (scripts, monitoring).
"""

from __future__ import annotations

import hmac
import html
import json
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import quote, urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from itsdangerous import BadData
from itsdangerous.encoding import base64_decode, base64_encode
from sqlalchemy import select

from bot.db.engine import reads_of
from bot.db.models import Store
from bot.links import ADMIN, LinkSigner, Verdict

SESSION_COOKIE = "wb_admin"
# The session rides to /admin and to the chat-toolbar sidebar /sidebar (bot/broadcast/toolbar.py); the
# state cookie only to /admin/auth.
SESSION_PATH = "/"
STATE_COOKIE = "wb_admin_state"
STATE_MINUTES = 10


@dataclass(frozen=True)
class Viewer:
    userid: str                       # "admin_token" for a Bearer request
    stores: frozenset[str] | None     # None: every store
    csrf: str = ""                    # "" for Bearer (no cookie, nothing to forge)

    @property
    def everything(self) -> bool:
        return self.stores is None

    def may_see(self, code: str) -> bool:
        return self.stores is None or code in self.stores


class NotAllowed(Exception):
    """Signed in, but neither ops nor a clerk of any store."""


def page(status: int, title: str, text: str, link: tuple[str, str] | None = None) -> HTMLResponse:
    more = f'<p><a href="{html.escape(link[0])}">{html.escape(link[1])}</a></p>' if link else ""
    return HTMLResponse(
        '<!doctype html><html lang="zh-CN"><meta charset="utf-8"><meta name="viewport" content="width=device-width">'
        f"<title>{html.escape(title)}</title><body style=\"font:16px/1.6 -apple-system,'PingFang SC',sans-serif;"
        f'max-width:480px;margin:0 auto;padding:24px\"><h1 style="font-size:20px">{html.escape(title)}</h1>'
        f"<p>{html.escape(text)}</p>{more}</body></html>", status_code=status)


def _pack(parts: list[str]) -> str:
    return base64_encode(json.dumps(parts, ensure_ascii=False, separators=(",", ":")).encode()).decode()


def _unpack(head: str, n: int) -> list[str] | None:
    try:
        parts = json.loads(base64_decode(head).decode("utf-8"))
    except (BadData, UnicodeDecodeError, ValueError):
        return None
    if not (isinstance(parts, list) and len(parts) == n and all(isinstance(p, str) for p in parts)):
        return None
    return parts if _pack(parts) == head else None


class AdminAuth:
    def __init__(self, settings, signer: LinkSigner, sessions, client, clock):
        self.settings = settings
        self.signer = signer
        self.sessions = sessions
        self.client = client
        self.clock = clock
        self.secure = settings.public_base_url.lower().startswith("https://")
        self.redirect_uri = settings.public_base_url.rstrip("/") + "/admin/auth"
        self._used_states: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    # -- cookies --------------------------------------------------------------------------
    def _signed(self, kind: str, parts: list[str], minutes: float) -> str:
        exp = self.clock.now() + timedelta(minutes=minutes)
        return f"{_pack(parts)}.{self.signer.sign(ADMIN, [kind, *parts], exp)}"

    def _opened(self, kind: str, value: str | None, n: int) -> list[str] | None:
        head, _, rest = (value or "").partition(".")
        parts = _unpack(head, n) if head else None
        if parts is None or self.signer.verify(ADMIN, [kind, *parts], rest) is not Verdict.OK:
            return None
        return parts

    def _set(self, resp: Response, name: str, value: str, max_age: int, path: str = "/admin") -> None:
        resp.set_cookie(name, value, max_age=max_age, path=path, httponly=True, samesite="lax", secure=self.secure)

    # -- login ----------------------------------------------------------------------------
    def login(self, request: Request, next_path: str = "/admin") -> Response:
        state = secrets.token_urlsafe(16)
        w = self.settings.wecom
        a = self.settings.admin
        if "wxwork" in request.headers.get("user-agent", "").lower():
            q = urlencode({"appid": w.corp_id, "redirect_uri": self.redirect_uri, "response_type": "code",
                           "scope": "snsapi_base", "state": state, "agentid": w.agent_id})
            url = f"{a.oauth_authorize_url}?{q}#wechat_redirect"
        else:
            q = urlencode({"login_type": "CorpApp", "appid": w.corp_id, "agentid": w.agent_id,
                           "redirect_uri": self.redirect_uri, "state": state})
            url = f"{a.web_login_url}?{q}"
        resp = RedirectResponse(url, status_code=302)
        self._set(resp, STATE_COOKIE, self._signed("state", [state, safe_next(next_path)], STATE_MINUTES),
                  STATE_MINUTES * 60)
        return resp

    def _take_state(self, value: str | None, state: str) -> str | None:
        """The `next` path when `state` is the one this browser's cookie holds and was not used yet."""
        parts = self._opened("state", value, 2)
        if parts is None or not state or not hmac.compare_digest(parts[0].encode(), state.encode()):
            return None
        with self._lock:
            if state in self._used_states:
                return None
            self._used_states[state] = None
            while len(self._used_states) > 10_000:
                self._used_states.popitem(last=False)
        return parts[1]

    def callback(self, request: Request, code: str, state: str) -> Response:
        """`/admin/auth`: runs in a worker thread (it calls WeCom)."""
        from bot.wecom.client import WeComError

        next_path = self._take_state(request.cookies.get(STATE_COOKIE), state)
        if next_path is None:
            resp = page(403, "登录已失效", "登录请求无效或已使用过，请重新登录。", ("/admin/login", "重新登录"))
            resp.delete_cookie(STATE_COOKIE, path="/admin")
            return resp
        try:
            who = self.client.member_auth.getuserinfo(code)
        except WeComError:
            return page(403, "登录失败", "企业微信登录码无效或已过期，请重新登录。", ("/admin/login", "重新登录"))
        userid = who.get("userid") or who.get("UserId")
        if not userid:
            return forbidden("你不是本企业的成员。")
        try:
            self.viewer_for(userid)
        except NotAllowed:
            return forbidden(f"成员 {userid} 没有后台权限：只有运营（ops_userids）和门店店员可以登录。")
        resp = RedirectResponse(next_path, status_code=303)
        hours = self.settings.admin.session_hours
        self._set(resp, SESSION_COOKIE, self._signed("session", [userid, secrets.token_urlsafe(16)], hours * 60),
                  int(hours * 3600), path=SESSION_PATH)
        resp.delete_cookie(STATE_COOKIE, path="/admin")
        return resp

    def logout(self) -> Response:
        # a page, not a redirect to /admin/login: that goes on to WeCom, which the CSP's form-action forbids
        resp = page(200, "已退出", "你已退出运营后台。", ("/admin/login", "重新登录"))
        resp.delete_cookie(SESSION_COOKIE, path=SESSION_PATH)
        resp.delete_cookie(SESSION_COOKIE, path="/admin")   # a session set before SESSION_PATH was "/"
        return resp

    # -- who is asking --------------------------------------------------------------------
    def viewer_for(self, userid: str, csrf: str = "") -> Viewer:
        if userid in self.settings.ops_userids:
            return Viewer(userid, None, csrf)
        with reads_of(self.sessions)() as s:
            mine = frozenset(code for code, clerks in s.execute(
                select(Store.code, Store.clerks).where(Store.closed_at.is_(None))) if userid in (clerks or []))
        if not mine:
            raise NotAllowed(userid)
        return Viewer(userid, mine, csrf)

    def viewer(self, request: Request) -> Viewer | Response:
        """The viewer, or the answer to give instead: 401 for a bad Bearer, a redirect to the login
        for a browser without a session, 403 for a member without rights."""
        authz = request.headers.get("authorization", "")
        if authz:
            scheme, _, token = authz.partition(" ")
            want = self.settings.admin_token.get_secret_value().encode()
            if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), want):
                return Viewer("admin_token", None)
            return Response("bad token", status_code=401, headers={"WWW-Authenticate": "Bearer"})
        parts = self._opened("session", request.cookies.get(SESSION_COOKIE), 2)
        if parts is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            resp = RedirectResponse(f"/admin/login?next={quote(target, safe='')}", status_code=303)
            if request.cookies.get(SESSION_COOKIE):
                resp.delete_cookie(SESSION_COOKIE, path=SESSION_PATH)
            return resp
        try:
            return self.viewer_for(parts[0], parts[1])
        except NotAllowed:
            return forbidden(f"成员 {parts[0]} 没有后台权限。")

    @staticmethod
    def csrf_ok(viewer: Viewer, sent: str | None) -> bool:
        if not viewer.csrf:          # Bearer: no cookie rides along, nothing to forge
            return viewer.userid == "admin_token"
        return bool(sent) and hmac.compare_digest(sent.encode(), viewer.csrf.encode())


def forbidden(text: str) -> HTMLResponse:
    return page(403, "无权访问", text + " 如需开通，请联系运营负责人。")


def safe_next(path: str | None) -> str:
    """Only our own admin pages (and the toolbar sidebar): never an open redirect."""
    if path == "/sidebar" or (path or "").startswith("/sidebar?"):
        return path if "\\" not in path and "\n" not in path else "/sidebar"
    if not path or not path.startswith("/admin") or path.startswith("//") or "\\" in path or "\n" in path:
        return "/admin"
    return path
