"""Inbound callbacks: verify, decrypt, parse (shared/wecom-facts.md §1-2).

wechatpy does the signature and AES; this adds what it leaves out: timestamp freshness, a body
cap, a delivery key that survives WeCom's redeliveries (FromUserName is always `sys` for
customer-contact events, so the doc's FromUserName+CreateTime collides), MemChangeList in both
its forms, and numbers as ints. The result is a typed domain event (bot.events).

A seen nonce is not an attack: WeCom's redelivery may repeat a request byte for byte, so an
identical request is answered 200 and deduplicated by its delivery key (DESIGN §2).
"""

from __future__ import annotations

import binascii
import hashlib
import re
import struct
from dataclasses import dataclass
from datetime import datetime, timezone
from xml.etree import ElementTree

from wechatpy.exceptions import InvalidSignatureException
from wechatpy.work.crypto import WeChatCrypto
from wechatpy.work.exceptions import InvalidCorpIdException

from bot import events as ev
from bot.clock import Clock


class CallbackRejected(Exception):
    """The request is refused with `status`; nothing is stored."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class InboundCallback:
    """A verified, decrypted callback, ready to store."""
    delivery_key: str
    kind: str
    xml: str
    priority: int = 1   # 0: handled first (priority_of)


# WeCom's payloads are plain elements and CDATA. Any other markup declaration (a DOCTYPE, an ENTITY,
# anywhere, in any case) is refused before a parser sees it: no entity expansion, no external fetch.
_DECLARATION = re.compile(rb"<!(?!\[CDATA\[)", re.IGNORECASE)
# In the decrypted payload (signed by WeCom) CDATA is a clerk's text, which may say "<!": not markup.
_CDATA = re.compile(rb"<!\[CDATA\[.*?\]\]>", re.DOTALL)


# The declaration test reads bytes as ASCII. WeCom sends UTF-8; a body in UTF-16 or UTF-32 (NUL bytes,
# which expat detects by itself) or declaring another encoding (EBCDIC's "<!" is other bytes) would
# carry a DOCTYPE past it, so it is refused first.
_OTHER_ENCODING = re.compile(rb"""^\s*<\?xml[^>]*encoding\s*=\s*["'](?!utf-?8["'])""", re.IGNORECASE)
MAX_DEPTH = 8   # WeCom's payloads nest three deep (<xml><MemChangeList><Item>)


def _parse_xml(text: str | bytes, what: str) -> dict:
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    if b"\x00" in raw or _OTHER_ENCODING.match(raw.removeprefix(b"\xef\xbb\xbf")):
        raise CallbackRejected(400, f"{what}: not UTF-8")
    # The envelope comes from anyone and holds only ids and base64: no exemption there.
    if _DECLARATION.search(raw if what == "envelope" else _CDATA.sub(b"", raw)):
        raise CallbackRejected(400, f"{what}: markup declarations (DOCTYPE, ENTITY, comments) are not accepted")
    try:
        root = ElementTree.fromstring(raw)
    except (ElementTree.ParseError, ValueError) as e:
        raise CallbackRejected(400, f"{what}: malformed XML ({e})") from None
    fields = _element(root, what) if root.tag == "xml" else None
    if not isinstance(fields, dict):
        raise CallbackRejected(400, f"{what}: no <xml> root")
    return fields


def _element(e: ElementTree.Element, what: str, depth: int = 0) -> dict | str | None:
    """xmltodict's shape (what wechatpy parses with): text stripped, None when empty, children as a dict,
    a repeated child as a list. Through ElementTree's C parser: xmltodict's Python callbacks were a
    quarter of the callback route's own time."""
    if not len(e):
        text = e.text.strip() if e.text else ""
        return text or None
    if depth >= MAX_DEPTH:
        raise CallbackRejected(400, f"{what}: nested over {MAX_DEPTH} deep")
    out: dict = {}
    for child in e:
        value = _element(child, what, depth + 1)
        if child.tag not in out:
            out[child.tag] = value
        elif isinstance(out[child.tag], list):
            out[child.tag].append(value)
        else:
            out[child.tag] = [out[child.tag], value]
    return out


# Bounds of a sane payload. WeCom's ids are short ASCII; a text message is at most 2,048 bytes. A signed
# payload outside them (a CreateTime of 10**12, a megabyte UserID) would otherwise be stored and retried
# by every worker as a poison event.
MAX_ID_CHARS = 128
MAX_FIELD_CHARS = 4096
MAX_EVENT_AGE_SECONDS = 7 * 24 * 3600    # WeCom redelivers for minutes, not days
MAX_EVENT_AHEAD_SECONDS = 3600
_ID_FIELDS = ("ToUserName", "FromUserName", "UserID", "ExternalUserID", "ChatId", "MsgType", "Event",
              "ChangeType", "UpdateDetail", "State", "AgentID", "MsgId")
_INT_FIELDS = ("CreateTime", "MsgId", "AgentID", "JoinScene", "QuitScene", "MemChangeCnt")


def check_fields(fields: dict, now: float) -> None:
    """Refuse a decrypted payload whose fields are absurd (400, counted like any rejection)."""
    for name, value in fields.items():
        if isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
            raise CallbackRejected(400, f"payload: {name} over {MAX_FIELD_CHARS} characters")
    for name in _ID_FIELDS:
        v = fields.get(name)
        if v is not None and (not isinstance(v, str) or len(v) > MAX_ID_CHARS):
            raise CallbackRejected(400, f"payload: {name} is not a short text field")
    for name in _INT_FIELDS:
        v = fields.get(name)
        if v not in (None, "") and not (isinstance(v, str) and v.isascii() and v.isdigit() and len(v) <= 20):
            raise CallbackRejected(400, f"payload: {name} is not a number")
    created = fields.get("CreateTime")
    if created in (None, ""):
        raise CallbackRejected(400, "payload: no CreateTime")
    if not now - MAX_EVENT_AGE_SECONDS <= int(created) <= now + MAX_EVENT_AHEAD_SECONDS:
        raise CallbackRejected(400, "payload: CreateTime out of range")


def kind_of(fields: dict) -> str:
    msg_type = str(fields.get("MsgType", "")).lower()
    if msg_type == "event":
        event = str(fields.get("Event", "")).lower()
        change = fields.get("ChangeType")
        return f"{event}/{change}" if change else event
    return msg_type or "unknown"


ADD_KINDS = frozenset({"change_external_contact/add_external_contact",
                       "change_external_contact/add_half_external_contact"})


def priority_of(kind: str, fields: dict) -> int:
    """0 (first) when someone is racing the clock: an add that carries a welcome code (it dies 20 s
    after the add), a clerk's text (they wait for the reply). An add without a code gets no welcome
    from us (one is set in the admin console, or they talked before): it need not jump the queue,
    and under load it must not delay the adds that do have a window."""
    if kind in ADD_KINDS:
        return 0 if fields.get("WelcomeCode") else 1
    return 0 if kind == "text" else 1


def delivery_key(fields: dict, xml: str) -> str:
    """MsgId for messages; a hash of the decrypted payload for events (identical on redelivery)."""
    if fields.get("MsgId"):
        return f"msg:{fields['MsgId']}"
    return "evt:" + hashlib.sha256(xml.encode("utf-8")).hexdigest()[:40]


class CallbackVerifier:
    def __init__(self, *, token: str, encoding_aes_key: str, corp_id: str, clock: Clock,
                 max_skew_seconds: int = 300, max_body_bytes: int = 64 * 1024):
        self.crypto = WeChatCrypto(token, encoding_aes_key, corp_id)
        self.clock = clock
        self.max_skew = max_skew_seconds
        self.max_body = max_body_bytes

    def _check_timestamp(self, timestamp: str) -> None:
        try:
            ts = int(timestamp)
        except (TypeError, ValueError):
            raise CallbackRejected(400, "timestamp is not an integer") from None
        if abs(self.clock.timestamp() - ts) > self.max_skew:
            raise CallbackRejected(403, "timestamp outside the allowed window")

    def verify_url(self, msg_signature: str, timestamp: str, nonce: str, echostr: str) -> str:
        """GET verification: the plaintext echostr, to be answered as is."""
        if not all((msg_signature, timestamp, nonce, echostr)):
            raise CallbackRejected(400, "msg_signature, timestamp, nonce and echostr are required")
        self._check_timestamp(timestamp)
        try:
            return self.crypto.check_signature(msg_signature, timestamp, nonce, echostr)
        except (InvalidSignatureException, InvalidCorpIdException):
            raise CallbackRejected(403, "bad signature or corp id") from None
        except (ValueError, binascii.Error, struct.error, UnicodeDecodeError, IndexError):
            raise CallbackRejected(400, "echostr does not decrypt") from None

    def open(self, msg_signature: str, timestamp: str, nonce: str, body: bytes) -> InboundCallback:
        if len(body) > self.max_body:
            raise CallbackRejected(413, f"body over {self.max_body} bytes")
        if not all((msg_signature, timestamp, nonce)):
            raise CallbackRejected(400, "msg_signature, timestamp and nonce are required")
        envelope = _parse_xml(body, "envelope")
        if not isinstance(envelope.get("Encrypt"), str):
            raise CallbackRejected(400, "envelope: no <Encrypt>")
        self._check_timestamp(timestamp)
        try:
            xml = self.crypto.decrypt_message(envelope, msg_signature, timestamp, nonce)
        except (InvalidSignatureException, InvalidCorpIdException):
            raise CallbackRejected(403, "bad signature or corp id") from None
        except (ValueError, binascii.Error, struct.error, UnicodeDecodeError, IndexError):
            raise CallbackRejected(400, "payload does not decrypt") from None
        fields = _parse_xml(xml, "payload")
        if not fields.get("MsgType"):
            raise CallbackRejected(400, "payload: no MsgType")
        check_fields(fields, self.clock.timestamp())
        kind = kind_of(fields)
        return InboundCallback(delivery_key(fields, xml), kind, xml, priority_of(kind, fields))


# -- payload → domain event ---------------------------------------------------------------

def _int(v) -> int | None:
    try:
        return int(v) if v not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _str(v) -> str | None:
    return v if isinstance(v, str) and v != "" else None


def _event_time(raw) -> datetime:
    """Rows stored before check_fields existed may hold any CreateTime: never let one raise here."""
    try:
        return datetime.fromtimestamp(_int(raw) or 0, timezone.utc)
    except (ValueError, OverflowError, OSError):
        return datetime.fromtimestamp(0, timezone.utc)


def member_change_list(raw) -> tuple[str, ...]:
    """`<Item>` lists (one item is not a list), or the older comma-separated text."""
    if raw is None:
        return ()
    if isinstance(raw, dict):
        items = raw.get("Item", [])
        items = items if isinstance(items, list) else [items]
        return tuple(str(i).strip() for i in items if i)
    if isinstance(raw, str):
        return tuple(p.strip() for p in raw.split(",") if p.strip())
    return ()


def parse_event(xml: str) -> ev.DomainEvent:
    """The stored payload as a typed event. Unknown kinds become UnhandledCallback, never a crash."""
    f = _parse_xml(xml, "payload")
    at = _event_time(f.get("CreateTime"))
    kind = kind_of(f)
    event, _, change = kind.partition("/")
    if event == "change_external_contact":
        userid, ext = f.get("UserID") or "", f.get("ExternalUserID") or ""
        if change in ("add_external_contact", "add_half_external_contact"):
            return ev.ContactAdded(at, userid, ext, _str(f.get("State")), _str(f.get("WelcomeCode")),
                                   half=change == "add_half_external_contact")
        if change == "del_external_contact":
            return ev.ContactRemoved(at, userid, ext, _str(f.get("Source")))
        if change == "del_follow_user":
            return ev.FollowUserDeleted(at, userid, ext)
        return ev.ContactChanged(at, change, userid, ext, _str(f.get("FailReason")))
    if event == "change_external_chat":
        return ev.GroupChatChanged(
            at, f.get("ChatId") or "", change, _str(f.get("UpdateDetail")),
            join_scene=_int(f.get("JoinScene")), quit_scene=_int(f.get("QuitScene")),
            mem_change_cnt=_int(f.get("MemChangeCnt")), member_ids=member_change_list(f.get("MemChangeList")),
            last_mem_ver=_str(f.get("LastMemVer")), cur_mem_ver=_str(f.get("CurMemVer")))
    if event == "change_contact" and change in ("create_user", "update_user", "delete_user"):
        return ev.StaffChanged(at, change, f.get("UserID") or "", _str(f.get("NewUserID")), _int(f.get("Status")))
    if event == "change_external_tag":
        return ev.TagChanged(at, f.get("Id") or "", f.get("TagType") or "", change, _int(f.get("StrategyId")))
    if kind == "text":
        return ev.ClerkTextReceived(at, f.get("FromUserName") or "", f.get("Content") or "",
                                    _int(f.get("MsgId")) or 0, _int(f.get("AgentID")) or 0)
    return ev.UnhandledCallback(at, kind, {k: v for k, v in f.items() if isinstance(v, str)})
