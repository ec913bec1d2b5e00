"""The callback endpoint as WeCom sees it: verification, rejections, acknowledgement, redelivery."""

import httpx
import pytest
from wechatpy.work.crypto import WeChatCrypto

from bot.db.models import Event
from bot.sandbox.driver import event_xml
from tests.contract.helpers import count

ADD = {"Event": "change_external_contact", "ChangeType": "add_external_contact", "UserID": "zhangsan",
       "ExternalUserID": "wmX", "State": "SZ001", "WelcomeCode": "code-1"}


def post(h, params, body):
    return httpx.post(h.driver.url, params=params, content=body, timeout=5)


def test_url_verification_answers_the_plain_echostr(harness):
    res = harness.driver.verify_url()
    assert res.status_code == 200 and res.text == res.expected


def test_url_verification_with_bad_signature_is_403(harness):
    res = httpx.get(harness.driver.url, params={"msg_signature": "0" * 40, "timestamp": str(int(harness.clock.timestamp())),
                                               "nonce": "n", "echostr": "abc"})
    assert res.status_code == 403


def test_valid_event_is_stored_once_and_acknowledged_with_empty_200(harness):
    xml = event_xml(harness.corp.corp_id, int(harness.clock.timestamp()), ADD)
    d = harness.driver.deliver("add", xml)
    assert d.statuses == [200]
    assert count(harness, Event) == 1


def test_identical_redelivery_is_200_and_changes_nothing(harness):
    xml = event_xml(harness.corp.corp_id, int(harness.clock.timestamp()), ADD)
    params, body = harness.driver.seal(xml)
    statuses = [post(harness, params, body).status_code for _ in range(4)]  # 1 + WeCom's 3 retries
    # and a redelivery with a fresh nonce (WeCom may re-sign) is the same event too
    statuses.append(post(harness, *harness.driver.seal(xml)).status_code)
    assert statuses == [200] * 5
    assert count(harness, Event) == 1


def test_bad_signature_is_403_and_stores_nothing(harness):
    params, body = harness.driver.seal(event_xml(harness.corp.corp_id, int(harness.clock.timestamp()), ADD))
    res = post(harness, {**params, "msg_signature": "f" * 40}, body)
    assert res.status_code == 403 and count(harness, Event) == 0


def test_wrong_corp_id_is_403(harness):
    corp = harness.corp
    other = WeChatCrypto(corp.token, corp.encoding_aes_key, "wwSOMEONEELSE")
    sealed = other.encrypt_message(event_xml("wwSOMEONEELSE", int(harness.clock.timestamp()), ADD), "nonce1",
                                   str(int(harness.clock.timestamp())))
    import xmltodict
    x = xmltodict.parse(sealed)["xml"]
    body = f"<xml><ToUserName>wwSOMEONEELSE</ToUserName><Encrypt><![CDATA[{x['Encrypt']}]]></Encrypt></xml>".encode()
    res = post(harness, {"msg_signature": x["MsgSignature"], "timestamp": x["TimeStamp"], "nonce": "nonce1"}, body)
    assert res.status_code == 403 and count(harness, Event) == 0


@pytest.mark.parametrize("skew", [-301, 301])
def test_stale_or_future_timestamp_is_403(harness, skew):
    ts = int(harness.clock.timestamp()) + skew
    params, body = harness.driver.seal(event_xml(harness.corp.corp_id, ts, ADD), timestamp=ts)
    assert post(harness, params, body).status_code == 403 and count(harness, Event) == 0


def test_body_over_the_cap_is_413(harness):
    params, _ = harness.driver.seal("<xml/>")
    res = post(harness, params, b"<xml><Encrypt>" + b"A" * (70 * 1024) + b"</Encrypt></xml>")
    assert res.status_code == 413 and count(harness, Event) == 0


@pytest.mark.parametrize("body", [b"not xml at all", b"<xml><Encrypt>abc", b"<xml><NoEncrypt/></xml>", b""])
def test_malformed_xml_is_400(harness, body):
    params, _ = harness.driver.seal("<xml/>")
    assert post(harness, params, body).status_code == 400 and count(harness, Event) == 0


def test_signed_payload_that_is_not_xml_is_400(harness):
    params, body = harness.driver.seal("this is not xml <<<")
    assert post(harness, params, body).status_code == 400 and count(harness, Event) == 0


def test_missing_query_parameters_is_400(harness):
    _, body = harness.driver.seal(event_xml(harness.corp.corp_id, int(harness.clock.timestamp()), ADD))
    assert post(harness, {}, body).status_code == 400


def test_bot_keeps_running_after_rejections(synced):
    harness = synced
    test_bad_signature_is_403_and_stores_nothing(harness)
    test_malformed_xml_is_400(harness, b"junk")
    assert harness.driver.member_adds_clerk("SZ001").statuses == [200]
    assert httpx.get(f"{harness.bot.url}/healthz").json() == {"status": "ok"}
    assert "wecom_callbacks_total" in httpx.get(f"{harness.bot.url}/metrics").text


def test_signed_payload_with_an_absurd_create_time_is_refused_and_counted(harness):
    params, body = harness.driver.seal(event_xml(harness.corp.corp_id, 10**12, ADD))
    assert post(harness, params, body).status_code == 400 and count(harness, Event) == 0
    metrics = httpx.get(f"{harness.bot.url}/metrics").text
    assert 'wecom_callbacks_total{result="rejected_400"} 1.0' in metrics


def test_a_doctype_past_the_first_512_bytes_is_refused(harness):
    params, body = harness.driver.seal(event_xml(harness.corp.corp_id, int(harness.clock.timestamp()), ADD))
    tail = body.replace(b"</xml>", b"<!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]></xml>")
    assert len(body) > 512
    assert post(harness, params, tail).status_code == 400 and count(harness, Event) == 0


def test_rejections_are_logged_rate_limited(harness, caplog):
    import logging

    params, _ = harness.driver.seal("<xml/>")
    with caplog.at_level(logging.WARNING, logger="bot.app"):
        for _ in range(60):
            post(harness, params, b"junk")
    told = [r for r in caplog.records if r.name == "bot.app" and "callback rejected" in r.getMessage()]
    # 60 rejections well inside a minute: one minute's allowance of lines, two if the loop straddles a minute
    assert 1 <= len(told) <= 40


def test_a_recorder_whose_connection_the_server_dropped_stores_the_next_callback_on_a_new_one(pg_url, clock):
    """The recorder keeps one connection between batches (no ping); one the server terminated is found
    dead by the insert, replaced, and the batch stored: WeCom gets its 200, not a 500 and a redelivery."""
    from sqlalchemy import create_engine, text

    from bot.sandbox.harness import Harness
    from tests.conftest import PG_URL, ROOT, STORES

    with Harness(database_url=pg_url, stores=STORES, clock=clock, calendar_dir=ROOT / "content_calendar",
                 workers=False) as h:
        assert not h.sync().failed
        assert h.driver.member_adds_clerk("SZ001").statuses == [200]
        with h.c.recorder._conn.connection.dbapi_connection.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            (pid,) = cur.fetchone()
        admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
        admin.dispose()
        assert h.driver.member_adds_clerk("SZ002").statuses == [200]
        assert count(h, Event) == 2
