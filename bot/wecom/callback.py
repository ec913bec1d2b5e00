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
import struct
from dataclasses import dataclass
from datetime import datetime, timezone
from xml.parsers.expat import ExpatError

import xmltodict
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


@dataclass(frozen=True)
class InboundCallback:
    """A verified, decrypted callback, ready to store."""
    delivery_key: str
    kind: str
    xml: str


def _parse_xml(text: str | bytes, what: str) -> dict:
    # WeCom never sends a DTD; refusing one closes entity-expansion tricks before expat sees them.
    head = text[:512] if isinstance(text, str) else text[:512].decode("utf-8", "replace")
    if "<!DOCTYPE" in head or "<!ENTITY" in head:
        raise CallbackRejected(400, f"{what}: DTDs are not accepted")
    try:
        doc = xmltodict.parse(text)
    except (ExpatError, ValueError) as e:
        raise CallbackRejected(400, f"{what}: malformed XML ({e})") from None
    root = doc.get("xml") if isinstance(doc, dict) else None
    if not isinstance(root, dict):
        raise CallbackRejected(400, f"{what}: no <xml> root")
    return root


def kind_of(fields: dict) -> str:
    msg_type = str(fields.get("MsgType", "")).lower()
    if msg_type == "event":
        event = str(fields.get("Event", "")).lower()
        change = fields.get("ChangeType")
        return f"{event}/{change}" if change else event
    return msg_type or "unknown"


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
        return InboundCallback(delivery_key(fields, xml), kind_of(fields), xml)


# -- payload → domain event ---------------------------------------------------------------

def _int(v) -> int | None:
    try:
        return int(v) if v not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _str(v) -> str | None:
    return v if isinstance(v, str) and v != "" else None


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
    at = datetime.fromtimestamp(_int(f.get("CreateTime")) or 0, timezone.utc)
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
    if event == "change_external_tag":
        return ev.TagChanged(at, f.get("Id") or "", f.get("TagType") or "", change, _int(f.get("StrategyId")))
    if kind == "text":
        return ev.ClerkTextReceived(at, f.get("FromUserName") or "", f.get("Content") or "",
                                    _int(f.get("MsgId")) or 0, _int(f.get("AgentID")) or 0)
    return ev.UnhandledCallback(at, kind, {k: v for k, v in f.items() if isinstance(v, str)})
