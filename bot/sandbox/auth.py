"""WeCom login in the simulated corp: the OAuth authorize page (inside the WeCom client) and the web
login page (扫码登录, `login_type=CorpApp`), both a list of members to pick from, and
`auth/getuserinfo` with WeCom's rules (doc 91023): a code is single use and lives 5 minutes, 40029
otherwise; a member answers `userid`, someone outside the corp `openid` and `external_userid`.

`AuthMixin` is a mixin of WeComBackend (it uses `clerks`, `lock`, `now`, `corp`); `auth_router`
is mounted by bot/sandbox/routes.py.
"""

from __future__ import annotations

import html
import secrets
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit, urlunsplit, parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from bot.sandbox.errors import SandboxError

CODE_SECONDS = 300          # 「code只能使用一次，5分钟未被使用自动过期」
STRANGER = "__stranger__"   # the picker's "not a member of this corp" choice
# A one-click login (`wecom-bot demo --serve` prints one): /_sandbox/auth/as/{userid} remembers the
# member in this cookie for a minute, and the next login page it reaches picks them at once. Not WeCom.
AS_COOKIE = "sandbox_login_as"


@dataclass
class OAuthCode:
    userid: str | None        # None: a WeChat user outside the corp
    issued_at: float
    used: bool = False


class AuthMixin:
    def reset_auth(self) -> None:
        self.oauth_codes: dict[str, OAuthCode] = {}
        self.other_members: set[str] = set()   # members who are not clerks (ops leads, office staff)

    def add_member(self, userid: str) -> None:
        with self.lock:
            self.other_members.add(userid)

    def members(self) -> list[str]:
        with self.lock:
            return sorted(self.clerks | self.other_members)

    def issue_oauth_code(self, userid: str | None) -> str:
        """What WeCom does when the member confirms the login: a code for the redirect."""
        with self.lock:
            if userid is not None and userid not in self.clerks and userid not in self.other_members:
                raise SandboxError(60111)
            code = secrets.token_urlsafe(24)
            self.oauth_codes[code] = OAuthCode(userid, self.now())
            return code

    def auth_getuserinfo(self, body: dict) -> dict:
        c = self.oauth_codes.get(str(body.get("code") or ""))
        if c is None or c.used or self.now() - c.issued_at > CODE_SECONDS:
            raise SandboxError(40029)
        c.used = True
        if c.userid is None:
            return {"openid": f"o{secrets.token_hex(12)}", "external_userid": f"wm{secrets.token_hex(12)}"}
        return {"userid": c.userid}


AUTH_ENDPOINTS = {"auth/getuserinfo": lambda backend, body: backend.auth_getuserinfo(body)}


def _with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


def auth_router(backend) -> APIRouter:
    r = APIRouter()

    def picker(request: Request, kind: str) -> HTMLResponse:
        q = request.query_params
        corp = backend.corp
        problems = []
        if q.get("appid") != corp.corp_id:
            problems.append("appid 不是本企业的 CorpID")
        if q.get("agentid") != str(corp.agent_id):
            problems.append("agentid 不是本应用")
        if kind == "oauth" and (q.get("response_type") != "code" or q.get("scope") != "snsapi_base"):
            problems.append("需要 response_type=code 与 scope=snsapi_base")
        if kind == "web" and q.get("login_type") != "CorpApp":
            problems.append("需要 login_type=CorpApp")
        redirect_uri = q.get("redirect_uri", "")
        if not redirect_uri.startswith(("http://", "https://")):
            problems.append("redirect_uri 无效")
        if problems:
            return HTMLResponse("<!doctype html><meta charset=utf-8><p>" + html.escape("；".join(problems)),
                                status_code=400)
        state = q.get("state", "")
        auto = request.cookies.get(AS_COOKIE)
        if auto and auto in backend.members():
            resp = RedirectResponse("/_sandbox/auth/pick?" + urlencode(
                {"userid": auto, "redirect_uri": redirect_uri, "state": state}), status_code=302)
            resp.delete_cookie(AS_COOKIE, path="/")
            return resp
        title = "企业微信授权登录（沙盒）" if kind == "oauth" else "企业微信扫码登录（沙盒）"
        items = "".join(
            f'<li><a id="pick-{html.escape(u)}" href="/_sandbox/auth/pick?{html.escape(urlencode({"userid": u, "redirect_uri": redirect_uri, "state": state}))}">'
            f"{html.escape(u)}</a></li>" for u in backend.members())
        stranger = html.escape(urlencode({"userid": STRANGER, "redirect_uri": redirect_uri, "state": state}))
        return HTMLResponse(
            f"<!doctype html><html lang=zh-CN><meta charset=utf-8><meta name=viewport content='width=device-width'>"
            f"<title>{title}</title><body style='font:16px/1.6 sans-serif;max-width:480px;margin:0 auto;padding:16px'>"
            f"<h1 style='font-size:20px'>{title}</h1><p>选择以哪位成员登录：</p><ul>{items}</ul>"
            f'<p><a id="pick-{STRANGER}" href="/_sandbox/auth/pick?{stranger}">非本企业成员（微信用户）</a></p></body></html>')

    @r.get("/connect/oauth2/authorize")
    def authorize(request: Request):
        return picker(request, "oauth")

    @r.get("/wwlogin/sso/login")
    def web_login(request: Request):
        return picker(request, "web")

    @r.get("/_sandbox/auth/as/{userid}")
    def login_as(userid: str, next: str = ""):
        """One click: remember `userid`, then start the app's own login at `next` (its state cookie is
        set as usual); the WeCom page it is sent to picks `userid` instead of asking."""
        # a sandbox on loopback signs browsers in to a bot on loopback, nowhere else (no open redirect)
        host = urlsplit(next).hostname if next.startswith(("http://", "https://")) else None
        if userid not in backend.members() or host not in ("127.0.0.1", "localhost", "::1"):
            return HTMLResponse("未知成员或 next 无效", status_code=400)
        resp = RedirectResponse(next, status_code=302)
        resp.set_cookie(AS_COOKIE, userid, max_age=60, path="/", httponly=True, samesite="lax")
        return resp

    @r.get("/_sandbox/auth/pick")
    def pick(userid: str, redirect_uri: str, state: str = ""):
        try:
            code = backend.issue_oauth_code(None if userid == STRANGER else userid)
        except SandboxError as e:
            return HTMLResponse(html.escape(e.errmsg), status_code=400)
        return RedirectResponse(_with_query(redirect_uri, code=code, state=state), status_code=302)

    return r
