"""Signed links (bot/links.py): salts per purpose, absolute expiry on the injected clock, rotation,
and one answer (bad) for every malformed token."""

from datetime import datetime, timedelta

import pytest
from pydantic import SecretStr

from bot.broadcast.sidebar import SidebarLinks
from bot.chains.service import Chains
from bot.clock import SHANGHAI, FakeClock
from bot.config import Settings
from bot.db.models import Chain
from bot.links import CSV, PURPOSES, QR, SIDEBAR, SIDEBAR_CHAIN, LinkSigner, Verdict, refusal

START = datetime(2026, 11, 23, 10, 0, tzinfo=SHANGHAI)
SUBJECT = ("2026-11-23", "1000", "zhangsan")


@pytest.fixture
def clock():
    return FakeClock(START)


@pytest.fixture
def signer(clock):
    return LinkSigner(["k-2025", "k-2026"], clock)


def settings(**kw) -> Settings:
    raw = {"wecom": {"corp_id": "ww1", "agent_id": 1000002, "secret": "wecom-secret", "token": "tok",
                     "encoding_aes_key": "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"},
           "admin_token": "admin-2026", **kw}
    return Settings.model_validate(raw)


@pytest.mark.parametrize("purpose", PURPOSES)
def test_round_trip_per_purpose(signer, purpose):
    token = signer.sign(purpose, SUBJECT, START + timedelta(hours=1))
    assert token.isascii() and signer.verify(purpose, SUBJECT, token) is Verdict.OK


def test_expired_exactly_at_its_time_and_not_a_second_before(signer, clock):
    token = signer.sign(CSV, SUBJECT, START + timedelta(seconds=100))
    clock.advance(99)
    assert signer.verify(CSV, SUBJECT, token) is Verdict.OK
    clock.advance(1)
    assert signer.verify(CSV, SUBJECT, token) is Verdict.EXPIRED
    clock.advance(days=400)
    assert signer.verify(CSV, SUBJECT, token) is Verdict.EXPIRED


def _flip(ch: str) -> str:
    return "B" if ch == "A" else "A"


@pytest.mark.parametrize("mangle", [
    lambda t: t[:20] + _flip(t[20]) + t[21:],                # tampered signature
    lambda t: str(int(t.split(".")[0]) + 3600) + "." + t.split(".")[1],  # a later expiry, same signature
    lambda t: t[:-1],                                        # truncated
    lambda t: t.split(".")[0],                               # expiry only
    lambda t: t.split(".")[0] + ".",
    lambda t: "." + t.split(".")[1],
    lambda t: "0" + t,                                       # same number, another spelling
    lambda t: t + "A",
    lambda t: t + " ",
    lambda t: t + "\n",
    lambda t: t.replace(".", ":"),
    lambda t: "签名",                                         # non-ASCII
    lambda t: t[:-2] + "签名"[:1] + t[-1],
    lambda t: "\ufffd",                                       # what ?sig=%ff decodes to
    lambda t: "%ff",
    lambda t: "\ud800",                                       # a lone surrogate
    lambda t: "",
    lambda t: None,
    lambda t: 12345,
    lambda t: t.split(".")[0] + "." + "=" * 43,
    lambda t: "1" * 13 + "." + t.split(".")[1],               # absurd expiry
])
def test_malformed_tampered_or_truncated_is_bad_never_an_exception(signer, mangle):
    token = signer.sign(SIDEBAR, SUBJECT, START + timedelta(hours=1))
    assert signer.verify(SIDEBAR, SUBJECT, mangle(token)) is Verdict.BAD


def test_only_the_canonical_spelling_of_a_signature_verifies(signer):
    token = signer.sign(SIDEBAR, SUBJECT, START + timedelta(hours=1))
    # 43 base64 characters carry 258 bits for 256: the last one's two spare bits change nothing decoded
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    i = alphabet.index(token[-1])
    twins = [token[:-1] + alphabet[j] for j in range(64) if j // 4 == i // 4 and j != i]
    assert len(twins) == 3 and all(signer.verify(SIDEBAR, SUBJECT, t) is Verdict.BAD for t in twins)


def test_tampered_and_expired_is_bad_not_expired(signer, clock):
    token = signer.sign(CSV, SUBJECT, START + timedelta(seconds=10))
    clock.advance(days=1)
    assert signer.verify(CSV, SUBJECT, token[:-3] + ("AAA" if token[-3:] != "AAA" else "BBB")) is Verdict.BAD


@pytest.mark.parametrize("signed_for", PURPOSES)
def test_a_token_is_good_for_its_own_purpose_only(signer, signed_for):
    token = signer.sign(signed_for, SUBJECT, START + timedelta(hours=1))
    for other in PURPOSES:
        if other != signed_for:
            assert signer.verify(other, SUBJECT, token) is Verdict.BAD


@pytest.mark.parametrize("other", [
    ("2026-11-23", "1000", "lisi"),        # another clerk's
    ("2026-11-24", "1000", "zhangsan"),    # another day's
    ("2026-11-23", "1200", "zhangsan"),    # another slot's
    ("2026-11-23", "1000"),
    ("2026-11-23", "1000", "zhangsan", ""),
    "2026-11-23/1000/zhangsan",
])
def test_a_token_is_good_for_its_own_subject_only(signer, other):
    token = signer.sign(SIDEBAR, SUBJECT, START + timedelta(hours=1))
    assert signer.verify(SIDEBAR, other, token) is Verdict.BAD


def test_subject_parts_cannot_be_shifted(signer):
    token = signer.sign(CSV, ("tok", "a|b"), START + timedelta(hours=1))
    assert signer.verify(CSV, ("tok|a", "b"), token) is Verdict.BAD
    assert signer.verify(CSV, ("tok", "a|b"), token) is Verdict.OK


def test_rotation_newest_signs_every_listed_key_verifies(clock):
    old = LinkSigner(["admin-2025"], clock)
    token = old.sign(SIDEBAR, SUBJECT, START + timedelta(hours=1))
    rotated = LinkSigner(["admin-2025", "admin-2026"], clock)
    assert rotated.verify(SIDEBAR, SUBJECT, token) is Verdict.OK
    fresh = rotated.sign(SIDEBAR, SUBJECT, START + timedelta(hours=1))
    assert fresh != token and LinkSigner(["admin-2026"], clock).verify(SIDEBAR, SUBJECT, fresh) is Verdict.OK
    # the old key dropped from the list, or never in it: refused
    assert LinkSigner(["admin-2026"], clock).verify(SIDEBAR, SUBJECT, token) is Verdict.BAD
    assert LinkSigner(["someone-else", "admin-2026"], clock).verify(SIDEBAR, SUBJECT, token) is Verdict.BAD


def test_keys_come_from_admin_token_and_link_keys_not_the_wecom_secret(clock):
    exp = START + timedelta(hours=1)
    token = LinkSigner.from_settings(settings(), clock).sign(SIDEBAR, SUBJECT, exp)
    other_secret = settings(wecom={**settings().wecom.model_dump(), "secret": SecretStr("rotated-wecom-secret")})
    assert LinkSigner.from_settings(other_secret, clock).sign(SIDEBAR, SUBJECT, exp) == token
    rotated = settings(admin_token="admin-2027")
    assert LinkSigner.from_settings(rotated, clock).verify(SIDEBAR, SUBJECT, token) is Verdict.BAD
    kept = settings(admin_token="admin-2027", link_keys=["admin-2026"])
    assert LinkSigner.from_settings(kept, clock).verify(SIDEBAR, SUBJECT, token) is Verdict.OK
    assert LinkSigner.from_settings(kept, clock).sign(SIDEBAR, SUBJECT, exp) != token


def test_an_unknown_purpose_is_a_programming_error(signer):
    with pytest.raises(ValueError):
        signer.sign("sidebar ", SUBJECT, START)
    with pytest.raises(ValueError):
        signer.verify("nope", SUBJECT, "1.x")
    with pytest.raises(ValueError):
        LinkSigner([], FakeClock())


def test_a_slot_link_works_to_the_end_of_its_day_plus_grace_in_the_bot_time_zone(signer, clock):
    links = SidebarLinks("http://bot.example/", signer, SHANGHAI, grace_hours=6)
    url = links.link("2026-11-23", "20:00", "zhangsan")
    assert url.startswith("http://bot.example/sidebar/2026-11-23/2000/zhangsan?sig=")
    sig = url.split("sig=")[1]
    assert links.valid("2026-11-23", "2000", "zhangsan", sig)
    assert links.check("2026-11-23", "2000", "lisi", sig) is Verdict.BAD
    assert links.check_chain("2026-11-23", "2000", sig) is Verdict.BAD      # a slot's sig on a chain URL
    clock.advance(datetime(2026, 11, 24, 5, 59, 59, tzinfo=SHANGHAI).timestamp() - clock.timestamp())
    assert links.check("2026-11-23", "2000", "zhangsan", sig) is Verdict.OK
    clock.advance(1)                                                        # Tuesday 06:00 Shanghai
    assert links.check("2026-11-23", "2000", "zhangsan", sig) is Verdict.EXPIRED
    assert not links.valid("2026-11-23", "2000", "zhangsan", sig)
    # minting again gives the same link: the page's own form posts back with the sig it was opened with
    assert links.sig("2026-11-23", "2000", "zhangsan") == sig


def test_a_chain_link_works_to_its_deadline_plus_grace(signer, clock):
    links = SidebarLinks("http://bot.example", signer, SHANGHAI, grace_hours=6)
    deadline = datetime(2026, 11, 28, 18, 0, tzinfo=SHANGHAI)
    sig = links.chain_link("tok123", "zhangsan", deadline).split("sig=")[1]
    assert links.check_chain("tok123", "zhangsan", sig) is Verdict.OK
    assert links.check_chain("tok123", "lisi", sig) is Verdict.BAD
    assert signer.verify(SIDEBAR, ("tok123", "zhangsan"), sig) is Verdict.BAD     # same subject, a slot's salt
    clock.advance(deadline.timestamp() + 6 * 3600 - 1 - clock.timestamp())
    assert links.check_chain("tok123", "zhangsan", sig) is Verdict.OK
    clock.advance(1)
    assert links.check_chain("tok123", "zhangsan", sig) is Verdict.EXPIRED


def test_the_csv_link_works_for_csv_link_days(signer, clock):
    chains = Chains("http://bot.example", signer, clock, csv_link_days=7)
    chain = Chain(token="tok123", clerk="zhangsan")
    url = chains.csv_link(chain)
    assert url.startswith("http://bot.example/c/tok123/orders.csv?u=zhangsan&sig=")
    sig = url.split("sig=")[1]
    assert chains.check_csv("tok123", "zhangsan", sig) is Verdict.OK
    assert chains.check_csv("tok123", "lisi", sig) is Verdict.BAD
    assert chains.check_csv("tok999", "zhangsan", sig) is Verdict.BAD
    clock.advance(days=7, seconds=-1)
    assert chains.check_csv("tok123", "zhangsan", sig) is Verdict.OK
    clock.advance(1)
    assert chains.check_csv("tok123", "zhangsan", sig) is Verdict.EXPIRED


def test_the_group_qr_token_carries_its_store_and_add(signer, clock):
    token = signer.sign_qr("SZ001", "42", START + timedelta(days=30))
    assert token.isascii() and "/" not in token
    assert signer.verify_qr(token) == (Verdict.OK, ("SZ001", "42"))
    assert signer.verify_qr(signer.sign_qr("深圳01", "7", START + timedelta(days=30))) == (Verdict.OK, ("深圳01", "7"))
    other = signer.sign_qr("SZ002", "42", START + timedelta(days=30))
    assert signer.verify_qr(other.split(".")[0] + token[token.index("."):]) == (Verdict.BAD, None)  # store swapped
    another_add = signer.sign_qr("SZ001", "43", START + timedelta(days=30))
    assert signer.verify_qr(another_add.split(".")[0] + token[token.index("."):]) == (Verdict.BAD, None)
    for bad in ("", ".", "签名", token.split(".", 1)[1], "U1o.1.x", "%%%." + token.split(".", 1)[1], None,
                "WyJTWjAwMSJd." + token.split(".", 1)[1]):     # ["SZ001"]: no add
        assert signer.verify_qr(bad) == (Verdict.BAD, None)
    assert signer.verify(QR, ["SZ001", "42"], token.split(".", 1)[1]) is Verdict.OK
    assert signer.verify(SIDEBAR_CHAIN, ["SZ001", "42"], token.split(".", 1)[1]) is Verdict.BAD
    clock.advance(days=30)
    assert signer.verify_qr(token) == (Verdict.EXPIRED, ("SZ001", "42"))


def test_refusal_pages_are_chinese_and_say_where_to_go():
    gone = refusal(Verdict.EXPIRED, expired="链接已过期，请从最新的提醒消息打开。", bad="链接无效。")
    assert gone.status_code == 410 and "链接已过期，请从最新的提醒消息打开。" in gone.body.decode()
    assert 'charset=utf-8' in gone.body.decode()
    for v in (Verdict.BAD, Verdict.OK):
        no = refusal(v, expired="x", bad="链接<无效>")
        assert no.status_code == 403 and "链接&lt;无效&gt;" in no.body.decode()
