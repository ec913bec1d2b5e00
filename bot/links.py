"""Signed links: the clerk's sidebar links (a slot's, a chain's), the pick-list CSV link, the
group-QR page `/q/{token}` and admin. itsdangerous signs and verifies (HMAC-SHA256, a salt per
purpose, the key list: the newest key signs, every key verifies); this module adds an absolute expiry
inside the signed text, read against the injected clock, and one answer for every bad token.

A token is `<expiry, epoch seconds>.<signature>`; the subject (day/slot/clerk, chain/clerk, …) is in
the URL already and is signed, not repeated. The expiry is absolute (end of a day, a chain's deadline),
which TimestampSigner's max_age (an age since signing) cannot say, so it is signed as part of the value.
"""

from __future__ import annotations

import enum
import hashlib
import html
import json
import logging
import re
from collections.abc import Sequence
from datetime import datetime

from fastapi.responses import HTMLResponse
from itsdangerous import BadData, Signer
from itsdangerous.encoding import base64_decode, base64_encode

from bot.config import PLACEHOLDER_ADMIN_TOKEN

log = logging.getLogger(__name__)

SIDEBAR = "sidebar"                # a slot's sidebar page, from the clerk's reminder
SIDEBAR_CHAIN = "sidebar-chain"    # a chain's announcement page, from the 开团 reply
CSV = "csv"                        # a chain's pick list as CSV
QR = "qr"                          # the group-QR page /q/{token} linked from welcomes
ADMIN = "admin"
PURPOSES = (SIDEBAR, SIDEBAR_CHAIN, CSV, QR, ADMIN)

# ASCII only, one spelling per link: no leading zero in the expiry, a sha256 signature is 43 base64url
# characters. Anything else (签名, %ff, '', truncated) is refused before any HMAC.
_TOKEN = re.compile(r"([1-9][0-9]{0,11})\.([A-Za-z0-9_-]{43})")
_B64 = re.compile(r"[A-Za-z0-9_-]{1,300}")


class Verdict(enum.Enum):
    OK = "ok"
    EXPIRED = "expired"   # ours and intact, past its time: 410 and where to get a fresh one
    BAD = "bad"           # anything else: 403


Subject = str | Sequence[str]


class LinkSigner:
    def __init__(self, keys: Sequence[str | bytes], clock):
        """keys: oldest first; the last one signs."""
        if not keys:
            raise ValueError("at least one link key is needed")
        self.clock = clock
        self._signers = {p: Signer(list(keys), salt=f"wecom-bot.link.{p}", key_derivation="hmac",
                                   digest_method=hashlib.sha256) for p in PURPOSES}

    @classmethod
    def from_settings(cls, settings, clock) -> LinkSigner:
        """admin_token signs; link_keys (earlier admin_tokens) still verify. Not the WeCom secret:
        rotating the app secret must break no link already sent."""
        # An empty or placeholder earlier key would verify links anyone can sign: never a verifying key.
        old = [k.get_secret_value() for k in settings.link_keys]
        keys = [k for k in old if k and k != PLACEHOLDER_ADMIN_TOKEN] + [settings.admin_token.get_secret_value()]
        if len(keys) != len(old) + 1:
            log.warning("link_keys: %d empty or placeholder entr(ies) ignored", len(old) + 1 - len(keys))
        return cls(keys, clock)

    def sign(self, purpose: str, subject: Subject, expires_at: datetime) -> str:
        exp = str(int(expires_at.timestamp()))
        return f"{exp}.{self._signer(purpose).get_signature(_message(subject, exp)).decode()}"

    def verify(self, purpose: str, subject: Subject, token) -> Verdict:
        signer = self._signer(purpose)
        m = _TOKEN.fullmatch(token) if isinstance(token, str) else None
        if m is None:
            return Verdict.BAD
        exp, sig = m.groups()
        # base64 ignores the spare bits of the last character: only the canonical spelling is the link
        if base64_encode(base64_decode(sig)).decode() != sig:
            return Verdict.BAD
        try:
            msg = _message(subject, exp)
        except (TypeError, ValueError):
            return Verdict.BAD
        if not signer.verify_signature(msg, sig):
            return Verdict.BAD
        return Verdict.OK if self.clock.timestamp() < int(exp) else Verdict.EXPIRED

    # The group-QR page's path has only the token, so the token carries its subject: the store, and
    # the add it was made for (one token per add: the page's view and report are that customer's).
    def sign_qr(self, store_code: str, add_id: str, expires_at: datetime) -> str:
        head = json.dumps([store_code, add_id], ensure_ascii=False, separators=(",", ":")).encode()
        return f"{base64_encode(head).decode()}.{self.sign(QR, [store_code, add_id], expires_at)}"

    def verify_qr(self, token) -> tuple[Verdict, tuple[str, str] | None]:
        """(verdict, (store code, add id)); the subject is None when the token is bad."""
        head, _, rest = token.partition(".") if isinstance(token, str) else ("", "", "")
        if not _B64.fullmatch(head):
            return Verdict.BAD, None
        try:
            subject = json.loads(base64_decode(head).decode("utf-8"))
        except (BadData, UnicodeDecodeError, ValueError):
            return Verdict.BAD, None
        if not (isinstance(subject, list) and len(subject) == 2 and all(isinstance(p, str) for p in subject)):
            return Verdict.BAD, None
        store, add = subject
        canonical = json.dumps([store, add], ensure_ascii=False, separators=(",", ":")).encode()
        if base64_encode(canonical).decode() != head:
            return Verdict.BAD, None
        verdict = self.verify(QR, [store, add], rest)
        return verdict, None if verdict is Verdict.BAD else (store, add)

    def _signer(self, purpose: str) -> Signer:
        try:
            return self._signers[purpose]
        except KeyError:
            raise ValueError(f"unknown link purpose {purpose!r}") from None


def _message(subject: Subject, exp: str) -> bytes:
    # JSON: no two (subject, expiry) pairs give the same signed text, whatever the parts contain
    parts = [subject] if isinstance(subject, str) else list(subject)
    if not all(isinstance(p, str) for p in parts):
        raise TypeError("a link subject is strings")
    return json.dumps([*parts, exp], ensure_ascii=False, separators=(",", ":")).encode()  # a lone surrogate: ValueError


def refusal(verdict: Verdict, *, expired: str = "链接已过期。", bad: str = "链接无效。") -> HTMLResponse:
    """The small Chinese page a refused link answers: 410 when it expired, else 403."""
    status, text = (410, expired) if verdict is Verdict.EXPIRED else (403, bad)
    title = "链接已过期" if status == 410 else "链接无效"
    return HTMLResponse(f"<!doctype html><meta charset=utf-8><meta name=viewport content=\"width=device-width\">"
                        f"<title>{title}</title><p>{html.escape(text)}</p>", status_code=status)
