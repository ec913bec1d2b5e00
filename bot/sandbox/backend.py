"""The simulated corp: state, and one method per WeCom endpoint with WeCom's rules.

Methods take the request body and return the response body, raising SandboxError(errcode).
Member and clerk actions (a customer scans a QR, joins a group) change state the way WeCom
would and return what WeCom would push as a callback; the driver sends it. Changes made through
the API emit no callback, as at WeCom.
"""

from __future__ import annotations

import itertools
import json
import secrets
import threading
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bot.clock import Clock
from bot.sandbox.auth import AUTH_ENDPOINTS, AuthMixin
from bot.sandbox.errors import SandboxError
from bot.sandbox.rules import Rules
from bot.sandbox.staff import STAFF_ENDPOINTS, StaffMixin
from bot.sandbox.stats import STATS_ENDPOINTS, StatsMixin
from bot.sandbox.tags import TAG_ENDPOINTS, TAG_WRITES, TagsMixin

MAX_JOIN_CHATS = 5
MAX_STATE = 30


@dataclass
class Member:
    userid: str
    type: int                 # 1 internal member, 2 external contact
    join_time: int
    join_scene: int           # groupchat/get encoding: 1 invited, 2 invite link, 3 scanned QR
    state: str | None = None
    name: str | None = None
    visible_at: float = 0.0   # groupchat/get lags the callback until then


@dataclass
class Group:
    chat_id: str
    name: str
    owner: str
    create_time: int
    members: list[Member] = field(default_factory=list)
    version: int = 1
    # groupchat/list `status` (doc 92120 via SDK text): 0 跟进人正常, 1 跟进人离职, 2 离职继承中, 3 离职继承完成
    status: int = 0

    @property
    def member_version(self) -> str:
        return f"v{self.version:08d}"


@dataclass
class WelcomeCode:
    code: str
    userid: str
    external_userid: str
    issued_at: float
    delivered: dict | None = None
    busy: int = 0             # answer 41096 this many times (another app is sending)


@dataclass
class Corp:
    corp_id: str
    secret: str
    agent_id: int
    token: str                # callback Token
    encoding_aes_key: str


class WeComBackend(StaffMixin, StatsMixin, TagsMixin, AuthMixin):
    def __init__(self, corp: Corp, clock: Clock, rules: Rules | None = None, public_url: str = ""):
        self.corp = corp
        self.clock = clock
        self.rules = rules or Rules()
        self.public_url = public_url.rstrip("/")
        self.lock = threading.RLock()
        self.reset()

    # -- state ----------------------------------------------------------------------------
    def reset(self) -> None:
        with self.lock:
            self.tokens: dict[str, float] = {}
            self.current_token: str | None = None
            self.clerks: set[str] = set()
            self.admin_welcome: set[str] = set()   # clerks with a console welcome: no welcome_code
            self.external: dict[str, dict] = {}
            self.contact_ways: dict[str, dict] = {}
            self.join_ways: dict[str, dict] = {}
            self.groups: dict[str, Group] = {}
            self.welcome_codes: dict[str, WelcomeCode] = {}
            self.media: dict[str, dict] = {}
            self.app_messages: list[dict] = []
            self.welcomes: list[dict] = []
            self.templates: dict[str, dict] = {}
            self.received: dict[str, list[int]] = defaultdict(list)   # target → send times (the cap counts these)
            self.tickets: dict[str, tuple[str, float]] = {}
            self.calls: dict[str, int] = defaultdict(int)
            self.writes: list[tuple[str, float]] = []
            self.errors: dict[str, int] = defaultdict(int)
            self._rate: dict[str, tuple[int, int]] = {}
            self._member_minute: dict[str, deque] = defaultdict(deque)
            self._inject: dict[str, deque] = defaultdict(deque)
            self._faults: dict[str, deque] = defaultdict(deque)
            self._member_hour: dict[str, deque] = defaultdict(deque)
            self._sent_json: dict[str, float] = {}      # message/send request JSON → when (duplicate check)
            self.dismissed: set[str] = set()
            self._ids = itertools.count(1)
            self.reset_staff()
            self.reset_stats()
            self.reset_tags()
            self.reset_auth()

    def _id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):06d}{secrets.token_hex(4)}"

    def now(self) -> float:
        return self.clock.timestamp()

    # -- seeding and control plane --------------------------------------------------------
    def add_clerk(self, userid: str, admin_welcome: bool = False) -> None:
        with self.lock:
            self.clerks.add(userid)
            if admin_welcome:
                self.admin_welcome.add(userid)

    def create_group(self, owner: str, name: str, members: int = 0) -> str:
        """A customer group owned by a clerk, with `members` invited customers already in it."""
        with self.lock:
            if owner not in self.clerks:
                raise SandboxError(40003)
            t = int(self.now())
            g = Group(self._id("wr"), name, owner, t, [Member(owner, 1, t, 1)])
            for _ in range(members):
                g.members.append(Member(self._new_external()["external_userid"], 2, t, 1))
            self.groups[g.chat_id] = g
            return g.chat_id

    def fill_group(self, chat_id: str, to: int) -> None:
        with self.lock:
            g = self.groups[chat_id]
            t = int(self.now())
            while len(g.members) < to:
                g.members.append(Member(self._new_external()["external_userid"], 2, t, 1))
            g.version += 1

    def inject(self, endpoint: str, errcode: int, times: int = 1) -> None:
        """The next `times` calls to `endpoint` fail with `errcode` (before any other rule)."""
        with self.lock:
            self._inject[endpoint].extend([errcode] * times)

    def inject_fault(self, endpoint: str, fault: str, times: int = 1) -> None:
        """The next `times` calls to `endpoint` are done, and then their answer is lost:
        `drop` (the connection breaks mid-answer) or `late` (the answer comes after the client gave up)."""
        if fault not in ("drop", "late"):
            raise ValueError(f"unknown fault {fault!r}")
        with self.lock:
            self._faults[endpoint].extend([fault] * times)

    def take_fault(self, endpoint: str) -> str | None:
        with self.lock:
            return self._faults[endpoint].popleft() if self._faults[endpoint] else None

    def dismiss_group(self, chat_id: str) -> dict:
        """The owner dismisses the group: gone from lists; groupchat/get answers dismissed_group_errcode.
        Returns the change_external_chat dismiss fields (doc 92130: 「ChangeType 此时固定为dismiss」)."""
        with self.lock:
            self.groups.pop(chat_id)
            self.dismissed.add(chat_id)
            if self.rules.dismissed_leaves_join_way:
                for way in self.join_ways.values():
                    way["chat_id_list"] = [c for c in way["chat_id_list"] if c != chat_id]
            return {"ChangeType": "dismiss", "ChatId": chat_id}

    def admin_changes_owner(self, chat_id: str, new_owner: str) -> dict:
        """An admin hands a group to another member in the admin console (not through the API, so WeCom
        calls back): the change_external_chat update fields, UpdateDetail change_owner (doc 92130:
        「change_owner : 群主变更」). The callback does not name the new owner: groupchat/get does."""
        with self.lock:
            g = self.groups.get(chat_id)
            if g is None:
                raise SandboxError(40050)
            if new_owner not in self.clerks:
                raise SandboxError(40003)
            g.owner = new_owner
            if not any(m.userid == new_owner for m in g.members):
                g.members.append(Member(new_owner, 1, int(self.now()), 1))
                g.version += 1
            return {"ChangeType": "update", "UpdateDetail": "change_owner", "ChatId": chat_id}

    def invalidate_tokens(self) -> None:
        """WeCom may invalidate access tokens early 「出于运营需要」."""
        with self.lock:
            self.tokens.clear()
            self.current_token = None

    def _new_external(self, name: str | None = None) -> dict:
        ext = {"external_userid": self._id("wm"), "name": name or "顾客", "follow": {}}
        self.external[ext["external_userid"]] = ext
        return ext

    def state(self) -> dict[str, Any]:
        with self.lock:
            return {
                "clerks": sorted(self.clerks),
                "contact_ways": {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")}
                                 for k, v in self.contact_ways.items()},
                "join_ways": self.join_ways,
                "groups": {c: {"name": g.name, "owner": g.owner, "members": len(g.members),
                               "member_version": g.member_version} for c, g in self.groups.items()},
                "welcomes": self.welcomes,
                "app_messages": self.app_messages,
                "media": {k: {kk: vv for kk, vv in v.items() if kk != "data"} for k, v in self.media.items()},
                "groupmsg": [{"msgid": t["msgid"], "creator": t["creator"], "create_type": t["create_type"],
                              "status": t["status"], "cancelled": t["cancelled"], "reminds": len(t["reminds"]),
                              "text": t["text"]["content"], "attachments": t["attachments"],
                              "results": {k: v["status"] for k, v in t["results"].items()}}
                             for t in self.templates.values()],
                "tickets": {k: v[0] for k, v in self.tickets.items()},
                "calls": dict(self.calls),
                "errors": dict(self.errors),
                "writes": len(self.writes),
                "rules": self.rules.as_dict(),
                "tags": self.tag_state(),      # tag groups with their tags; each customer's tags per clerk
            }

    # -- the API front door ---------------------------------------------------------------
    WRITES = {"externalcontact/add_contact_way", "externalcontact/update_contact_way",
              "externalcontact/del_contact_way", "externalcontact/groupchat/add_join_way",
              "externalcontact/groupchat/update_join_way", "externalcontact/groupchat/del_join_way",
              "media/upload", "message/send", "externalcontact/send_welcome_msg",
              "externalcontact/add_msg_template", "externalcontact/remind_groupmsg_send",
              "externalcontact/cancel_groupmsg_send"}

    def call(self, endpoint: str, access_token: str | None, body: dict) -> dict:
        handler = ENDPOINTS.get(endpoint)
        if handler is None:
            raise SandboxError(404, f"sandbox does not simulate {endpoint}")
        with self.lock:
            self.calls[endpoint] += 1
            try:
                self._check_token(access_token)
                if self._inject[endpoint]:
                    raise SandboxError(self._inject[endpoint].popleft())
                self._check_rate(endpoint)
                res = handler(self, body)
                if endpoint in self.WRITES:
                    self.writes.append((endpoint, self.now()))
                return {"errcode": 0, "errmsg": "ok", **(res or {})}
            except SandboxError as e:
                self.errors[f"{endpoint}:{e.errcode}"] += 1
                raise

    def gettoken(self, corpid: str, corpsecret: str) -> dict:
        with self.lock:
            self.calls["gettoken"] += 1
            if self._inject["gettoken"]:
                raise SandboxError(self._inject["gettoken"].popleft())
            if corpid != self.corp.corp_id or corpsecret != self.corp.secret:
                raise SandboxError(40001)
            self._check_rate("gettoken")
            now = self.now()
            # The same token while it is valid; a new one once it expired (or was invalidated).
            if not self.current_token or self.tokens.get(self.current_token, 0) <= now:
                self.current_token = secrets.token_urlsafe(48)
                self.tokens[self.current_token] = now + self.rules.token_ttl
            if self.rules.gettoken_repeat == "full":
                expires_in = self.rules.token_ttl   # what it says, not when it runs out: 42001 tells
            else:
                expires_in = int(self.tokens[self.current_token] - now)   # whole seconds, rounded down
            return {"errcode": 0, "errmsg": "ok", "access_token": self.current_token, "expires_in": expires_in}

    def _check_token(self, token: str | None) -> None:
        if not token:
            raise SandboxError(41001)
        expires = self.tokens.get(token)
        if expires is None:
            raise SandboxError(40014)
        if expires <= self.now():
            raise SandboxError(42001)

    def _check_rate(self, endpoint: str) -> None:
        if endpoint == "message/send" and endpoint not in self.rules.api_limits:
            return  # app messages have their own per-member limits, outside the API frequency limit
        limit = self.rules.api_limits.get(endpoint, self.rules.per_api_per_minute)
        minute = int(self.now() // 60)
        start, count = self._rate.get(endpoint, (minute, 0))
        if start != minute:
            start, count = minute, 0
        if count >= limit:
            raise SandboxError(45009)
        self._rate[endpoint] = (start, count + 1)

    def qr_url(self, kind: str, config_id: str) -> str:
        return f"{self.public_url}/_sandbox/qr/{kind}/{config_id}.png"

    # -- contact ways 「联系我」 ------------------------------------------------------------
    def _validate_contact_way(self, body: dict) -> None:
        if body.get("type") not in (1, 2) or body.get("scene") not in (1, 2):
            raise SandboxError(40058, "type and scene are required")
        users = body.get("user") or []
        if not users or (body["type"] == 1 and len(users) != 1) or len(users) > 100:
            raise SandboxError(40058, "type 1 takes exactly one user; at most 100")
        if any(u not in self.clerks for u in users):
            raise SandboxError(40003)
        if len(body.get("state") or "") > MAX_STATE:
            raise SandboxError(40058, "state over 30 characters")

    def add_contact_way(self, body: dict) -> dict:
        self._validate_contact_way(body)
        config_id = self._id("cw")
        way = {"config_id": config_id, "type": body["type"], "scene": body["scene"],
               "remark": body.get("remark", ""), "skip_verify": body.get("skip_verify", True),
               "state": body.get("state", ""), "user": list(body["user"]), "party": body.get("party", [])}
        if body["scene"] == 2:
            way["qr_code"] = self.qr_url("contact", config_id)
        way["create_time"] = int(self.now())
        self.contact_ways[config_id] = way
        return {"config_id": config_id, **({"qr_code": way["qr_code"]} if "qr_code" in way else {})}

    def list_contact_way(self, body: dict) -> dict:
        now = self.now()
        start, end = int(body.get("start_time", now - 90 * 86400)), int(body.get("end_time", now))
        limit = int(body.get("limit", 100))
        if not 0 < limit <= 1000:
            raise SandboxError(40058, "limit 1..1000")
        ids = [c for c, w in self.contact_ways.items() if start <= w.get("create_time", 0) <= end]
        at = int(body.get("cursor") or 0)
        nxt = str(at + limit) if at + limit < len(ids) else ""
        return {"contact_way": [{"config_id": c} for c in ids[at:at + limit]], "next_cursor": nxt}

    def _contact_way(self, body: dict) -> dict:
        way = self.contact_ways.get(body.get("config_id", ""))
        if way is None:
            raise SandboxError(41044)
        return way

    def get_contact_way(self, body: dict) -> dict:
        return {"contact_way": {k: v for k, v in self._contact_way(body).items() if not k.startswith("_")}}

    def update_contact_way(self, body: dict) -> dict:
        way = self._contact_way(body)
        merged = {**way, **{k: v for k, v in body.items() if k != "config_id"}}
        self._validate_contact_way(merged)
        way.update(merged)
        return {}

    def del_contact_way(self, body: dict) -> dict:
        self._contact_way(body)
        del self.contact_ways[body["config_id"]]
        return {}

    # -- customer groups ------------------------------------------------------------------
    def groupchat_list(self, body: dict) -> dict:
        limit = int(body.get("limit") or 0)
        if not 1 <= limit <= 1000:
            raise SandboxError(40058, "limit must be 1-1000")
        owners = (body.get("owner_filter") or {}).get("userid_list")
        if owners is not None and len(owners) > 100:
            raise SandboxError(40058, "owner_filter.userid_list over 100")
        # status_filter (doc 92120 via SDK text): 「0 - 所有列表(即不过滤) 1 - 离职待继承 2 - 离职继承中
        # 3 - 离职继承完成 默认为0」
        status_filter = int(body.get("status_filter") or 0)
        if status_filter not in (0, 1, 2, 3):
            raise SandboxError(40058, "status_filter must be 0-3")
        chats = sorted(c for c, g in self.groups.items() if (owners is None or g.owner in owners)
                       and (status_filter == 0 or g.status == status_filter))
        start = int(body.get("cursor") or 0)
        page = chats[start:start + limit]
        nxt = str(start + limit) if start + limit < len(chats) else ""
        return {"group_chat_list": [{"chat_id": c, "status": self.groups[c].status} for c in page], "next_cursor": nxt}

    def groupchat_get(self, body: dict) -> dict:
        g = self.groups.get(body.get("chat_id", ""))
        if g is None:
            raise SandboxError(self.rules.dismissed_group_errcode if body.get("chat_id") in self.dismissed else 40050)
        now = self.now()
        need_name = bool(body.get("need_name"))
        members = []
        for m in g.members:
            if m.visible_at > now:
                continue
            item = {"userid": m.userid, "type": m.type, "join_time": m.join_time, "join_scene": m.join_scene}
            if m.state:
                item["state"] = m.state
            if need_name and m.name:
                item["name"] = m.name
            members.append(item)
        return {"group_chat": {"chat_id": g.chat_id, "name": g.name, "owner": g.owner,
                               "create_time": g.create_time, "notice": "", "member_list": members,
                               "admin_list": [], "member_version": g.member_version}}

    # -- join ways 「加入群聊」 -------------------------------------------------------------
    def _validate_join_way(self, body: dict) -> None:
        chats = body.get("chat_id_list") or []
        if body.get("scene") not in (1, 2) or not chats or len(chats) > MAX_JOIN_CHATS:
            raise SandboxError(40058, "scene and 1-5 chat_id_list are required")
        if any(c not in self.groups for c in chats):
            raise SandboxError(40050)
        if len(body.get("state") or "") > MAX_STATE:
            raise SandboxError(40058, "state over 30 characters")

    def add_join_way(self, body: dict) -> dict:
        self._validate_join_way(body)
        config_id = self._id("jw")
        self.join_ways[config_id] = {
            "config_id": config_id, "scene": body["scene"], "remark": (body.get("remark") or "")[:30],
            "auto_create_room": int(body.get("auto_create_room", 1)), "room_base_name": body.get("room_base_name", ""),
            "room_base_id": int(body.get("room_base_id", 1)), "chat_id_list": list(body["chat_id_list"]),
            "state": body.get("state", ""), "qr_code": self.qr_url("join", config_id), "_created": 0}
        return {"config_id": config_id}

    def _join_way(self, body: dict) -> dict:
        way = self.join_ways.get(body.get("config_id", ""))
        if way is None:
            raise SandboxError(41044)
        return way

    def get_join_way(self, body: dict) -> dict:
        return {"join_way": {k: v for k, v in self._join_way(body).items() if not k.startswith("_")}}

    def update_join_way(self, body: dict) -> dict:
        way = self._join_way(body)
        self._validate_join_way(body)
        way.update({k: body[k] for k in ("scene", "remark", "auto_create_room", "room_base_name",
                                         "room_base_id", "chat_id_list", "state") if k in body})
        return {}

    def del_join_way(self, body: dict) -> dict:
        self._join_way(body)
        del self.join_ways[body["config_id"]]
        return {}

    # -- media ----------------------------------------------------------------------------
    def media_upload(self, body: dict) -> dict:
        """body: {type, filename, data} from the multipart form (routes.py)."""
        data, media_type = body["data"], body.get("type")
        if len(data) <= 5 or len(data) > 20 * 1024 * 1024:
            raise SandboxError(40006)
        if media_type not in ("image", "voice", "video", "file"):
            raise SandboxError(40058, "invalid media type")
        media_id = self._id("3m")
        now = self.now()
        self.media[media_id] = {"type": media_type, "filename": body.get("filename"), "size": len(data),
                                "created_at": now, "data": data}
        return {"type": media_type, "media_id": media_id, "created_at": str(int(now))}

    def _check_media(self, media_id: str | None) -> None:
        m = self.media.get(media_id or "")
        if m is None or self.now() - m["created_at"] > self.rules.media_ttl:
            raise SandboxError(40007)

    def _check_attachments(self, attachments: list[dict]) -> None:
        if len(attachments) > 9:
            raise SandboxError(40058, "at most 9 attachments")
        for a in attachments:
            kind = a.get("msgtype")
            if kind in ("image", "video", "file"):
                part = a.get(kind) or {}
                if kind == "image" and part.get("pic_url"):
                    continue
                self._check_media(part.get("media_id"))
            elif kind == "miniprogram":
                self._check_media((a.get("miniprogram") or {}).get("pic_media_id"))
            elif kind == "link":   # title and url are required (doc 92137 send_welcome_msg / 92135)
                link = a.get("link") or {}
                if not link.get("title") or not link.get("url"):
                    raise SandboxError(40058, "link attachment needs title and url")
            else:
                raise SandboxError(40058, f"invalid attachment type {kind!r}")

    # -- app messages to clerks -------------------------------------------------------------
    def message_send(self, body: dict) -> dict:
        users = [u for u in str(body.get("touser") or "").split("|") if u]
        if str(body.get("agentid")) != str(self.corp.agent_id):
            raise SandboxError(40058, "invalid agentid")
        valid = [u for u in users if u in self.clerks]
        invalid = [u for u in users if u not in self.clerks]
        if not valid:
            raise SandboxError(81013)
        kind = body.get("msgtype")
        content = (body.get(kind) or {}) if kind else {}
        if kind == "text" and len(str(content.get("content", "")).encode()) > 2048:
            raise SandboxError(45002)
        now = self.now()
        msgid = self._id("msg")
        duplicate = False
        if self.rules.duplicate_check and body.get("enable_duplicate_check"):
            same = json.dumps(body, sort_keys=True, ensure_ascii=False)
            interval = float(body.get("duplicate_check_interval") or 1800)
            duplicate = self._sent_json.get(same, -1e18) > now - interval
            if not duplicate:
                self._sent_json[same] = now
        for u in valid:
            dropped = "duplicate" if duplicate else None
            for window, span, limit in ((self._member_minute[u], 60, self.rules.app_msg_per_member_minute),
                                        (self._member_hour[u], 3600, self.rules.app_msg_per_member_hour)):
                while window and window[0] <= now - span:
                    window.popleft()
                if not dropped and len(window) >= limit:
                    dropped = "member_limit"     # dropped silently, as WeCom does
            if not dropped:
                self._member_minute[u].append(now)
                self._member_hour[u].append(now)
            self.app_messages.append({"msgid": msgid, "touser": u, "msgtype": kind, kind: content,
                                      "at": now, "dropped": dropped})
        return {"invaliduser": "|".join(invalid), "msgid": msgid}

    # -- welcome --------------------------------------------------------------------------
    def send_welcome_msg(self, body: dict) -> dict:
        code = body.get("welcome_code")
        if not code:
            raise SandboxError(41049)
        wc = self.welcome_codes.get(code)
        now = self.now()
        if wc is None:
            raise SandboxError(41050)
        if wc.delivered is not None:
            raise SandboxError(41051)
        if now - wc.issued_at > self.rules.welcome_code_ttl:
            raise SandboxError(41050)
        if wc.busy > 0:
            wc.busy -= 1
            raise SandboxError(41096)
        text = (body.get("text") or {}).get("content", "")
        attachments = body.get("attachments") or []
        if not text and not attachments:
            raise SandboxError(40058, "text or attachments required")
        if len(text.encode()) > 4000:
            raise SandboxError(45002)
        self._check_attachments(attachments)
        wc.delivered = {"welcome_code": code, "userid": wc.userid, "external_userid": wc.external_userid,
                        "text": text, "attachments": attachments, "issued_at": wc.issued_at, "sent_at": now,
                        "latency": now - wc.issued_at}
        self.welcomes.append(wc.delivered)
        return {}

    # -- group messages (群发) -------------------------------------------------------------
    def add_msg_template(self, body: dict) -> dict:
        chat_type = body.get("chat_type", "single")
        text = (body.get("text") or {}).get("content", "")
        attachments = body.get("attachments") or []
        if len(text.encode()) > 4000:
            raise SandboxError(45002)
        self._check_attachments(attachments)
        if chat_type == "group":
            sender = body.get("sender")
            chats = body.get("chat_id_list") or []
            if not sender or sender not in self.clerks:
                raise SandboxError(40003)
            if len(chats) > 2000:
                raise SandboxError(40058, "chat_id_list over 2000")
            targets = [c for c in chats if c in self.groups and self.groups[c].owner == sender]
            fail = [c for c in chats if c not in targets]
        else:
            sender = body.get("sender")
            targets = [e for e in body.get("external_userid") or [] if e in self.external]
            fail = [e for e in body.get("external_userid") or [] if e not in self.external]
        if not targets:
            raise SandboxError(41048, "no sendable customers")
        msgid = self._id("msgGM")
        self.templates[msgid] = {"msgid": msgid, "chat_type": chat_type, "creator": sender, "create_type": 0,
                                 "create_time": int(self.now()), "text": {"content": text},
                                 "attachments": attachments, "targets": targets,
                                 "status": "pending", "results": {t: {"status": 0} for t in targets},
                                 "reminds": [], "cancelled": False}
        if self.rules.groupmsg_confirm == "immediate":
            self._confirm(msgid)
        return {"fail_list": fail, "msgid": msgid}

    def _received_in_period(self, target: str, now: float) -> int:
        day = datetime.fromtimestamp(now, self.clock.tz)
        count = 0
        for send_time in self.received.get(target, ()):
            sent = datetime.fromtimestamp(send_time, self.clock.tz)
            if self.rules.receive_cap == "daily_1":
                count += sent.date() == day.date()
            elif self.rules.receive_cap == "weekly_7":
                count += sent.isocalendar()[:2] == day.isocalendar()[:2]
            else:
                count += (sent.year, sent.month) == (day.year, day.month)
        return count

    def _cap(self, now: float) -> int:
        import calendar
        day = datetime.fromtimestamp(now, self.clock.tz)
        return {"daily_1": 1, "weekly_7": 7}.get(self.rules.receive_cap) or calendar.monthrange(day.year, day.month)[1]

    def _confirm(self, msgid: str) -> None:
        t = self.templates[msgid]
        if t["cancelled"] or t["status"] == "sent":
            return
        now = self.now()
        cap = self._cap(now)
        for target, r in t["results"].items():
            if self._received_in_period(target, now) >= cap:
                r.update(status=3)           # the group already got its allowance
            else:
                r.update(status=1, send_time=int(now))
                self.received[target].append(int(now))
        t["status"] = "sent"
        t["send_time"] = int(now)

    def confirm_groupmsg(self, msgid: str) -> None:
        """The owner clerk taps 发送 in WeCom."""
        with self.lock:
            if msgid not in self.templates:
                raise SandboxError(40058, "unknown msgid")
            self._confirm(msgid)

    def clerk_mass_send(self, sender: str, chat_ids: list[str], text: str) -> str:
        """A clerk's own mass message from the WeCom client (create_type 1): sent at once, and counted
        against the same receive cap as the corp's."""
        with self.lock:
            res = self.add_msg_template({"chat_type": "group", "sender": sender, "chat_id_list": chat_ids,
                                         "text": {"content": text}})
            t = self.templates[res["msgid"]]
            t["create_type"] = 1
            self._confirm(res["msgid"])
            return res["msgid"]

    def get_groupmsg_list_v2(self, body: dict) -> dict:
        start, end = int(body.get("start_time", 0)), int(body.get("end_time", 0))
        if end - start > 31 * 86400 or end < start:
            raise SandboxError(40058, "span over one month")
        ft = int(body.get("filter_type", 2))
        items = [t for t in self.templates.values() if start <= t["create_time"] <= end
                 and t["chat_type"] == body.get("chat_type", "single")
                 and (ft == 2 or t["create_type"] == ft)
                 and (not body.get("creator") or t["creator"] == body["creator"])]
        limit = min(int(body.get("limit") or 50), 100)
        at = int(body.get("cursor") or 0)
        page = items[at:at + limit]
        return {"group_msg_list": [{k: t[k] for k in ("msgid", "creator", "create_type", "create_time", "text",
                                                      "attachments")} for t in page],
                "next_cursor": str(at + limit) if at + limit < len(items) else ""}

    def _template(self, body: dict) -> dict:
        t = self.templates.get(body.get("msgid", ""))
        if t is None:
            raise SandboxError(40058, "invalid msgid")
        return t

    def get_groupmsg_task(self, body: dict) -> dict:
        t = self._template(body)
        task = {"userid": t["creator"], "status": 2 if t["status"] == "sent" else 0}
        if t["status"] == "sent":
            task["send_time"] = t["send_time"]
        return {"task_list": [task], "next_cursor": ""}

    def get_groupmsg_send_result(self, body: dict) -> dict:
        t = self._template(body)
        key = "chat_id" if t["chat_type"] == "group" else "external_userid"
        rows = []
        for target, r in t["results"].items():
            row = {key: target, "userid": t["creator"], "status": r["status"]}
            if r["status"] == 1:
                row["send_time"] = r["send_time"]
            rows.append(row)
        return {"send_list": rows, "next_cursor": ""}

    def remind_groupmsg_send(self, body: dict) -> dict:
        t = self._template(body)
        now = self.now()
        recent = [r for r in t["reminds"] if r > now - 86400]
        if len(recent) >= self.rules.remind_per_day:
            raise SandboxError(self.rules.remind_limit_errcode, "at most 3 reminders per broadcast in 24 h")
        t["reminds"] = recent + [now]
        return {}

    def cancel_groupmsg_send(self, body: dict) -> dict:
        self._template(body)["cancelled"] = True
        return {}

    # -- JS-SDK tickets ---------------------------------------------------------------------
    def _ticket(self, kind: str) -> dict:
        now = self.now()
        cur = self.tickets.get(kind)
        if cur is None or cur[1] <= now:
            cur = (secrets.token_urlsafe(32), now + self.rules.token_ttl)
            self.tickets[kind] = cur
        return {"ticket": cur[0], "expires_in": int(cur[1] - now)}

    def get_jsapi_ticket(self, body: dict) -> dict:
        return self._ticket("corp")

    def ticket_get(self, body: dict) -> dict:
        if body.get("type") != "agent_config":
            raise SandboxError(40058, "type must be agent_config")
        return self._ticket("agent_config")

    # -- what members and clerks do (the driver turns these into callbacks) ----------------
    def member_scans_contact_way(self, state_or_config: str, name: str | None = None,
                                 external_userid: str | None = None) -> dict:
        """A customer scans a store's clerk QR and adds the clerk: the add_external_contact fields."""
        with self.lock:
            way = self.contact_ways.get(state_or_config) or next(
                (w for w in self.contact_ways.values() if w["state"] == state_or_config), None)
            if way is None:
                raise SandboxError(41044, f"no contact way for {state_or_config}")
            ext = self.external.get(external_userid or "") or self._new_external(name)
            users = way["user"]
            way["_adds"] = way.get("_adds", 0) + 1  # a multi-clerk QR shares customers in turn
            userid = users[way["_adds"] % len(users)]
            ext["follow"][userid] = way["state"]
            fields = {"ChangeType": "add_external_contact", "UserID": userid,
                      "ExternalUserID": ext["external_userid"], "State": way["state"]}
            if userid not in self.admin_welcome:
                code = secrets.token_urlsafe(24)
                self.welcome_codes[code] = WelcomeCode(code, userid, ext["external_userid"], self.now())
                fields["WelcomeCode"] = code
            return fields

    def member_deletes_clerk(self, external_userid: str, userid: str) -> dict:
        with self.lock:
            self.external.get(external_userid, {}).get("follow", {}).pop(userid, None)
            return {"ChangeType": "del_follow_user", "UserID": userid, "ExternalUserID": external_userid}

    def member_scans_join_way(self, state_or_config: str, external_userid: str | None = None) -> dict:
        """A customer scans a store's group QR. Returns the change_external_chat fields, or raises
        SandboxError when the join fails (every group at the scan limit and no auto-create)."""
        with self.lock:
            way = self.join_ways.get(state_or_config) or next(
                (w for w in self.join_ways.values() if w["state"] == state_or_config), None)
            if way is None:
                raise SandboxError(41044, f"no join way for {state_or_config}")
            if way["state"] in self.rules.broken_join_states:
                raise SandboxError(-1, "系统错误，无法加入群聊 (the QR is broken for everyone)")
            group = next((self.groups[c] for c in way["chat_id_list"]
                          if c in self.groups and len(self.groups[c].members) < self.rules.scan_join_limit), None)
            if group is None:
                if not way["auto_create_room"]:
                    raise SandboxError(-1, "群已满 (all groups behind this QR are full)")
                way["_created"] += 1
                owner = self.groups[way["chat_id_list"][0]].owner
                chat_id = self.create_group(owner, f"{way['room_base_name']}{way['room_base_id'] + way['_created'] - 1}")
                group = self.groups[chat_id]
                if len(way["chat_id_list"]) < MAX_JOIN_CHATS:
                    way["chat_id_list"].append(chat_id)
            ext_id = external_userid or self._new_external()["external_userid"]
            now = self.now()
            last = group.member_version
            group.members.append(Member(ext_id, 2, int(now), 3, state=way["state"] or None,
                                        name=self.external.get(ext_id, {}).get("name"),   # need_name shows it
                                        visible_at=now + self.rules.groupchat_get_lag))
            group.version += 1
            return {"ChangeType": "update", "UpdateDetail": "add_member", "ChatId": group.chat_id,
                    "JoinScene": "3", "MemChangeCnt": "1", "MemChangeList": [ext_id],
                    "LastMemVer": last, "CurMemVer": group.member_version}

    def member_invited(self, chat_id: str, inviter: str | None = None) -> dict:
        """A clerk invites a customer into a group: JoinScene 0, no state."""
        with self.lock:
            group = self.groups[chat_id]
            ext = self._new_external()["external_userid"]
            now = self.now()
            last = group.member_version
            group.members.append(Member(ext, 2, int(now), 1, visible_at=now + self.rules.groupchat_get_lag))
            group.version += 1
            return {"ChangeType": "update", "UpdateDetail": "add_member", "ChatId": chat_id, "JoinScene": "0",
                    "MemChangeCnt": "1", "MemChangeList": [ext], "LastMemVer": last, "CurMemVer": group.member_version}

    def member_leaves(self, chat_id: str, external_userid: str) -> dict:
        with self.lock:
            group = self.groups[chat_id]
            last = group.member_version
            group.members = [m for m in group.members if m.userid != external_userid]
            group.version += 1
            return {"ChangeType": "update", "UpdateDetail": "del_member", "ChatId": chat_id, "QuitScene": "0",
                    "MemChangeCnt": "1", "MemChangeList": [external_userid], "LastMemVer": last,
                    "CurMemVer": group.member_version}

    def break_qr(self, state: str, how: str) -> None:
        """Break a store's group QR the ways it breaks in life:
        deleted (the join way is gone), full (its groups at the scan cap, auto-create off),
        nobody (scanning fails for everyone), or fix (undo `nobody`)."""
        with self.lock:
            way = next((w for w in self.join_ways.values() if w["state"] == state), None)
            if how == "deleted" and way:
                del self.join_ways[way["config_id"]]
            elif how == "full" and way:
                way["auto_create_room"] = 0
                for chat_id in way["chat_id_list"]:
                    self.fill_group(chat_id, self.rules.scan_join_limit)
            elif how == "nobody":
                self.rules.broken_join_states.append(state)
            elif how == "fix":
                self.rules.broken_join_states = [s for s in self.rules.broken_join_states if s != state]
            else:
                raise SandboxError(40058, f"cannot break {state!r} as {how!r}")

    def welcome_busy(self, code: str, times: int) -> None:
        """Another app is sending this welcome: 41096 for the next `times` calls."""
        with self.lock:
            self.welcome_codes[code].busy = times


def _body_handler(name):
    return lambda backend, body: getattr(backend, name)(body)


ENDPOINTS = {
    "externalcontact/add_contact_way": _body_handler("add_contact_way"),
    "externalcontact/get_contact_way": _body_handler("get_contact_way"),
    "externalcontact/list_contact_way": _body_handler("list_contact_way"),
    "externalcontact/update_contact_way": _body_handler("update_contact_way"),
    "externalcontact/del_contact_way": _body_handler("del_contact_way"),
    "externalcontact/groupchat/list": _body_handler("groupchat_list"),
    "externalcontact/groupchat/get": _body_handler("groupchat_get"),
    "externalcontact/groupchat/add_join_way": _body_handler("add_join_way"),
    "externalcontact/groupchat/get_join_way": _body_handler("get_join_way"),
    "externalcontact/groupchat/update_join_way": _body_handler("update_join_way"),
    "externalcontact/groupchat/del_join_way": _body_handler("del_join_way"),
    "externalcontact/send_welcome_msg": _body_handler("send_welcome_msg"),
    "externalcontact/add_msg_template": _body_handler("add_msg_template"),
    "externalcontact/get_groupmsg_list_v2": _body_handler("get_groupmsg_list_v2"),
    "externalcontact/get_groupmsg_task": _body_handler("get_groupmsg_task"),
    "externalcontact/get_groupmsg_send_result": _body_handler("get_groupmsg_send_result"),
    "externalcontact/remind_groupmsg_send": _body_handler("remind_groupmsg_send"),
    "externalcontact/cancel_groupmsg_send": _body_handler("cancel_groupmsg_send"),
    "message/send": _body_handler("message_send"),
    "get_jsapi_ticket": _body_handler("get_jsapi_ticket"),
    "ticket/get": _body_handler("ticket_get"),
    "media/upload": _body_handler("media_upload"),
}
ENDPOINTS.update(STAFF_ENDPOINTS)   # staff turnover: user/get, transfers (bot/sandbox/staff.py)
ENDPOINTS.update(STATS_ENDPOINTS)   # group statistics: groupchat/statistic, by day (bot/sandbox/stats.py)
ENDPOINTS.update(TAG_ENDPOINTS)     # corp customer tags and mark_tag (bot/sandbox/tags.py)
ENDPOINTS.update(AUTH_ENDPOINTS)    # auth/getuserinfo: the ops console's login (bot/sandbox/auth.py)
WeComBackend.WRITES = WeComBackend.WRITES | TAG_WRITES
