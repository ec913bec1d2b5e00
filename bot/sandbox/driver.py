"""Plays members and clerks: changes the sandbox as they would and POSTs the callback WeCom would
push, encrypted and signed as WeCom does, redelivering the same request when the bot is slow."""

from __future__ import annotations

import random
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import xmltodict
from wechatpy.crypto import _get_signature
from wechatpy.work.crypto import PrpCrypto, WeChatCrypto

from bot.sandbox.backend import WeComBackend
from bot.sandbox.errors import SandboxError


def _cdata(v: str) -> str:
    return "<![CDATA[" + str(v).replace("]]>", "]]]]><![CDATA[>") + "]]>"


def event_xml(corp_id: str, create_time: int, fields: dict, *, msg_type: str = "event",
              from_user: str = "sys", legacy_member_list: bool = False) -> str:
    """The decrypted payload WeCom pushes (shared/wecom-facts.md §2)."""
    parts = [f"<ToUserName>{_cdata(corp_id)}</ToUserName>", f"<FromUserName>{_cdata(from_user)}</FromUserName>",
             f"<CreateTime>{create_time}</CreateTime>", f"<MsgType>{_cdata(msg_type)}</MsgType>"]
    for k, v in fields.items():
        if k == "MemChangeList":
            inner = _cdata(",".join(v)) if legacy_member_list else "".join(f"<Item>{_cdata(i)}</Item>" for i in v)
            parts.append(f"<MemChangeList>{inner}</MemChangeList>")
        elif isinstance(v, int):
            parts.append(f"<{k}>{v}</{k}>")
        else:
            parts.append(f"<{k}>{_cdata(v)}</{k}>")
    return "<xml>" + "".join(parts) + "</xml>"


@dataclass
class Delivery:
    kind: str
    fields: dict
    statuses: list = field(default_factory=list)  # one per attempt: HTTP status, or "timeout"/"error"
    seconds: list = field(default_factory=list)
    request: tuple[dict, bytes] | None = None     # (query, body) exactly as sent: replayable byte for byte

    @property
    def acked(self) -> bool:
        return bool(self.statuses) and self.statuses[-1] == 200

    def summary(self) -> dict:
        return {"kind": self.kind, "fields": self.fields, "statuses": self.statuses}


class Driver:
    def __init__(self, backend: WeComBackend, callback_url: str, http: httpx.Client | None = None):
        self.backend = backend
        self.url = callback_url
        corp = backend.corp
        self.crypto = WeChatCrypto(corp.token, corp.encoding_aes_key, corp.corp_id)
        self.http = http or httpx.Client(limits=httpx.Limits(max_connections=64, max_keepalive_connections=64))

    # -- the wire ---------------------------------------------------------------------------
    def seal(self, xml: str, timestamp: int | None = None, nonce: str | None = None) -> tuple[dict, bytes]:
        """Query params and body of the POST WeCom would make for this payload."""
        timestamp = str(timestamp if timestamp is not None else int(self.backend.now()))
        nonce = nonce or secrets.token_hex(8)
        sealed = xmltodict.parse(self.crypto.encrypt_message(xml, nonce, timestamp))["xml"]
        corp = self.backend.corp
        body = (f"<xml><ToUserName>{_cdata(corp.corp_id)}</ToUserName><AgentID>{_cdata(corp.agent_id)}</AgentID>"
                f"<Encrypt>{_cdata(sealed['Encrypt'])}</Encrypt></xml>").encode()
        return {"msg_signature": sealed["MsgSignature"], "timestamp": timestamp, "nonce": nonce}, body

    def post(self, params: dict, body: bytes, timeout: float | None = None) -> httpx.Response:
        return self.http.post(self.url, params=params, content=body,
                              headers={"Content-Type": "text/xml"},
                              timeout=timeout or self.backend.rules.callback_timeout)

    def deliver(self, kind: str, xml: str, fields: dict | None = None) -> Delivery:
        """POST once, then redeliver the very same request on a timeout or a non-200 answer."""
        params, body = self.seal(xml)
        d = Delivery(kind, fields or {}, request=(params, body))
        for _ in range(1 + self.backend.rules.redeliveries):
            started = time.perf_counter()
            try:
                status = self.post(params, body).status_code
            except httpx.TimeoutException:
                status = "timeout"
            except httpx.TransportError:
                status = "error"
            d.statuses.append(status)
            d.seconds.append(time.perf_counter() - started)
            if status == 200:
                break
        return d

    def verify_url(self) -> httpx.Response:
        """What WeCom does when an admin saves the callback URL."""
        echo_plain = secrets.token_hex(10)
        echostr = PrpCrypto(self.crypto.key).encrypt(echo_plain, self.backend.corp.corp_id).decode()
        timestamp, nonce = str(int(self.backend.now())), secrets.token_hex(8)
        sig = _get_signature(self.crypto.token, timestamp, nonce, echostr)
        res = self.http.get(self.url, params={"msg_signature": sig, "timestamp": timestamp, "nonce": nonce,
                                              "echostr": echostr}, timeout=5)
        res.expected = echo_plain  # type: ignore[attr-defined]
        return res

    # -- people ----------------------------------------------------------------------------
    def _event(self, event: str, fields: dict, **kw) -> Delivery:
        xml = event_xml(self.backend.corp.corp_id, int(self.backend.now()), {"Event": event, **fields}, **kw)
        return self.deliver(f"{event}/{fields.get('ChangeType')}", xml, fields)

    def member_adds_clerk(self, state: str, name: str | None = None) -> Delivery:
        return self._event("change_external_contact", self.backend.member_scans_contact_way(state, name))

    def member_joins_group(self, state: str, external_userid: str | None = None, *,
                           legacy_member_list: bool = False) -> Delivery:
        fields = self.backend.member_scans_join_way(state, external_userid)
        return self._event("change_external_chat", fields, legacy_member_list=legacy_member_list)

    def member_invited(self, chat_id: str) -> Delivery:
        return self._event("change_external_chat", self.backend.member_invited(chat_id))

    def member_leaves(self, chat_id: str, external_userid: str) -> Delivery:
        return self._event("change_external_chat", self.backend.member_leaves(chat_id, external_userid))

    def member_deletes_clerk(self, external_userid: str, userid: str) -> Delivery:
        return self._event("change_external_contact", self.backend.member_deletes_clerk(external_userid, userid))

    def admin_changes_owner(self, chat_id: str, new_owner: str) -> Delivery:
        """An admin hands a group to another clerk in the console: change_external_chat / update, change_owner."""
        return self._event("change_external_chat", self.backend.admin_changes_owner(chat_id, new_owner))

    def owner_dismisses(self, chat_id: str) -> Delivery:
        """The owner dismisses the group: change_external_chat / dismiss."""
        return self._event("change_external_chat", self.backend.dismiss_group(chat_id))

    def clerk_leaves(self, userid: str, *, keep_record: bool = False) -> Delivery:
        """An admin deletes the member: change_contact / delete_user (通讯录回调)."""
        return self._event("change_contact", self.backend.delete_user(userid, keep_record=keep_record))

    def clerk_joins(self, userid: str, name: str | None = None) -> Delivery:
        """A member is created (or comes back): change_contact / create_user."""
        return self._event("change_contact", self.backend.create_user(userid, name))

    def customer_refuses_transfer(self, external_userid: str) -> Delivery:
        """The customer taps 「暂不添加」: change_external_contact / transfer_fail, FailReason customer_refused."""
        return self._event("change_external_contact", self.backend.customer_refuses_transfer(external_userid))

    def clerk_says(self, userid: str, text: str) -> Delivery:
        msg_id = str(secrets.randbits(62))
        xml = event_xml(self.backend.corp.corp_id, int(self.backend.now()),
                        {"Content": text, "MsgId": msg_id, "AgentID": self.backend.corp.agent_id},
                        msg_type="text", from_user=userid)
        return self.deliver("text", xml, {"UserID": userid, "Content": text})

    def burst(self, states: list[str], *, join: bool | float = False, concurrency: int = 16,
              rng: random.Random | None = None) -> list[Delivery]:
        """Customers arriving at once: each adds the clerk of a store and then joins its group
        (always with join=True, with that probability with a float)."""
        rng = rng or random.Random(11)
        joins = [join is True or (join and rng.random() < join) for _ in states]

        def one(args: tuple[str, bool]) -> list[Delivery]:
            state, joining = args
            added = self.member_adds_clerk(state)
            out = [added]
            if joining:
                try:
                    out.append(self.member_joins_group(state, added.fields["ExternalUserID"]))
                except SandboxError as e:
                    out.append(Delivery("join_failed", {"state": state, "errcode": e.errcode}))
            return out

        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="member") as pool:
            return [d for ds in pool.map(one, zip(states, joins)) for d in ds]
