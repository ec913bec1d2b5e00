from datetime import datetime, timezone

import pytest

from bot import events as ev
from bot.clock import FakeClock
from bot.sandbox.driver import event_xml
from bot.wecom.callback import CallbackRejected, CallbackVerifier, delivery_key, kind_of, parse_event

CORP = "wwcorp0001"


def xml(fields, **kw):
    return event_xml(CORP, 1763859600, fields, **kw)


def test_add_external_contact_becomes_contact_added_with_state_and_code():
    e = parse_event(xml({"Event": "change_external_contact", "ChangeType": "add_external_contact",
                         "UserID": "zhangsan", "ExternalUserID": "wmABC", "State": "SZ001", "WelcomeCode": "CODE"}))
    assert e == ev.ContactAdded(datetime.fromtimestamp(1763859600, timezone.utc), "zhangsan", "wmABC", "SZ001", "CODE")


def test_add_without_welcome_code_has_none():
    e = parse_event(xml({"Event": "change_external_contact", "ChangeType": "add_external_contact",
                         "UserID": "u", "ExternalUserID": "wm1", "State": "SZ001"}))
    assert e.welcome_code is None and not e.half


def test_del_follow_user_is_customer_deleting_the_clerk():
    e = parse_event(xml({"Event": "change_external_contact", "ChangeType": "del_follow_user",
                         "UserID": "u", "ExternalUserID": "wm1"}))
    assert isinstance(e, ev.FollowUserDeleted)


@pytest.mark.parametrize("legacy", [False, True])
def test_mem_change_list_in_item_and_comma_forms_with_ints(legacy):
    e = parse_event(xml({"Event": "change_external_chat", "ChangeType": "update", "ChatId": "wr1",
                         "UpdateDetail": "add_member", "JoinScene": "3", "MemChangeCnt": "2",
                         "MemChangeList": ["wm1", "wm2"], "LastMemVer": "a", "CurMemVer": "b"},
                        legacy_member_list=legacy))
    assert isinstance(e, ev.GroupChatChanged)
    assert e.member_ids == ("wm1", "wm2")
    assert e.join_scene == 3 and e.mem_change_cnt == 2
    assert (e.last_mem_ver, e.cur_mem_ver) == ("a", "b")


def test_a_single_item_is_still_a_list():
    e = parse_event(xml({"Event": "change_external_chat", "ChangeType": "update", "ChatId": "wr1",
                         "UpdateDetail": "del_member", "QuitScene": "1", "MemChangeList": ["wm9"]}))
    assert e.member_ids == ("wm9",) and e.quit_scene == 1 and e.join_scene is None


def test_tag_event_and_text_message():
    t = parse_event(xml({"Event": "change_external_tag", "ChangeType": "create", "Id": "et1", "TagType": "tag",
                         "StrategyId": 3}))
    assert t == ev.TagChanged(t.at, "et1", "tag", "create", 3)
    m = parse_event(event_xml(CORP, 1, {"Content": "帮助", "MsgId": "1234567890123456", "AgentID": 1000002},
                              msg_type="text", from_user="zhangsan"))
    assert m == ev.ClerkTextReceived(m.at, "zhangsan", "帮助", 1234567890123456, 1000002)


def test_unknown_kind_is_stored_not_crashed():
    e = parse_event(xml({"Event": "some_new_event", "Foo": "bar"}))
    assert isinstance(e, ev.UnhandledCallback) and e.kind == "some_new_event"


def test_delivery_key_events_hash_the_payload_messages_use_msgid():
    a = xml({"Event": "change_external_tag", "ChangeType": "update", "Id": "t1", "TagType": "tag"})
    b = xml({"Event": "change_external_tag", "ChangeType": "update", "Id": "t2", "TagType": "tag"})
    # same second, FromUserName sys: the doc's FromUserName+CreateTime would collide; ours do not
    assert delivery_key({}, a) != delivery_key({}, b)
    assert delivery_key({}, a) == delivery_key({}, a)
    assert delivery_key({"MsgId": "42"}, "x") == "msg:42"
    assert kind_of({"MsgType": "event", "Event": "change_external_chat", "ChangeType": "update"}) == \
        "change_external_chat/update"


def test_doctype_is_refused():
    v = CallbackVerifier(token="t", encoding_aes_key="a" * 43, corp_id=CORP, clock=FakeClock())
    with pytest.raises(CallbackRejected) as e:
        v.open("sig", "1", "n", b'<!DOCTYPE x [<!ENTITY a "b">]><xml><Encrypt>&a;</Encrypt></xml>')
    assert e.value.status == 400


def _verifier():
    return CallbackVerifier(token="t", encoding_aes_key="a" * 43, corp_id=CORP, clock=FakeClock())


@pytest.mark.parametrize("body", [
    b"<xml><Encrypt>" + b"x" * 600 + b'</Encrypt><!DOCTYPE x [<!ENTITY a "b">]></xml>',   # past the first 512 bytes
    b'<xml><Encrypt>abc</Encrypt><!entity a "b"></xml>',                                   # any case
    b"<?xml version='1.0'?>\n  <!DoCtYpE xml SYSTEM 'file:///etc/passwd'><xml><Encrypt>a</Encrypt></xml>",
    b"<xml><!-- a comment --><Encrypt>abc</Encrypt></xml>",
])
def test_a_markup_declaration_anywhere_in_the_envelope_is_refused(body):
    with pytest.raises(CallbackRejected) as e:
        _verifier().open("sig", "1", "n", body)
    assert e.value.status == 400 and "declaration" in e.value.reason


_BOMB = '<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;">]><xml><Encrypt>&b;</Encrypt></xml>'


@pytest.mark.parametrize("body", [
    _BOMB.encode("utf-16"),                                         # the declaration test reads ASCII bytes
    _BOMB.encode("utf-16-le"),                                      # no BOM: expat still detects it
    _BOMB.encode("utf-32"),
    b"<?xml version='1.0' encoding='cp037'?>" + _BOMB.encode("cp037"),   # EBCDIC's "<!" is other bytes
    b'<?xml version="1.0" encoding="ISO-8859-1"?><xml><Encrypt>abc</Encrypt></xml>',
])
def test_an_envelope_in_another_encoding_than_utf8_is_refused_before_parsing(body):
    with pytest.raises(CallbackRejected) as e:
        _verifier().open("sig", "1", "n", body)
    assert e.value.status == 400 and "not UTF-8" in e.value.reason


def test_a_utf8_declaration_and_bom_are_accepted():
    from bot.wecom.callback import _parse_xml

    for head in (b"", b"\xef\xbb\xbf", b'<?xml version="1.0" encoding="UTF-8"?>'):
        assert _parse_xml(head + b"<xml><Encrypt>abc</Encrypt></xml>", "envelope") == {"Encrypt": "abc"}


def test_a_deeply_nested_envelope_is_a_400_not_a_crash():
    with pytest.raises(CallbackRejected) as e:
        _verifier().open("sig", "1", "n", b"<xml>" + b"<a>" * 9000 + b"x" + b"</a>" * 9000 + b"</xml>")
    assert e.value.status == 400 and "nested" in e.value.reason


def test_an_entity_in_the_decrypted_payload_is_refused_before_parsing():
    from bot.wecom.callback import _parse_xml

    payload = "<xml><MsgType>text</MsgType>" + "<Content>hi</Content>" * 100 + '<!ENTITY a "b"></xml>'
    with pytest.raises(CallbackRejected) as e:
        _parse_xml(payload, "payload")
    assert e.value.status == 400


@pytest.mark.parametrize("fields, why", [
    ({"CreateTime": "1000000000000"}, "CreateTime out of range"),
    ({"CreateTime": "1"}, "CreateTime out of range"),
    ({"CreateTime": "１７６３８５９６００"}, "CreateTime is not a number"),      # full-width digits
    ({"CreateTime": ""}, "no CreateTime"),
    ({"MsgId": "12ab"}, "MsgId is not a number"),
    ({"UserID": "u" * 500}, "UserID is not a short text field"),
    ({"Content": "长" * 5000}, "Content over"),
])
def test_a_signed_payload_with_absurd_fields_is_refused(fields, why):
    from bot.wecom.callback import check_fields

    now = 1763859600
    base = {"ToUserName": CORP, "FromUserName": "sys", "CreateTime": str(now), "MsgType": "event"}
    with pytest.raises(CallbackRejected) as e:
        check_fields({**base, **fields}, now)
    assert e.value.status == 400 and why in e.value.reason


def test_sane_fields_pass_and_a_stored_absurd_time_does_not_raise():
    from bot.wecom.callback import check_fields

    now = 1763859600
    check_fields({"CreateTime": str(now - 600), "MsgType": "text", "MsgId": "7318", "Content": "数据"}, now)
    e = parse_event(event_xml(CORP, 10**12, {"Event": "change_external_contact", "ChangeType": "del_follow_user",
                                             "UserID": "u", "ExternalUserID": "wm1"}))
    assert e.at.year == 1970   # an old poisoned row parses; it no longer retries forever


def test_rate_limited_log_tells_a_minutes_allowance_then_how_many_it_held_back():
    import logging

    from bot.logs import RateLimitedLog

    now = [0.0]
    records: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("test.ratelog")
    logger.addHandler(Catch())
    logger.propagate = False
    log = RateLimitedLog(logger, per_minute=3, monotonic=lambda: now[0])
    told = [log.warning("rejected %d", i) for i in range(10)]
    assert told == [True] * 3 + [False] * 7 and records == ["rejected 0", "rejected 1", "rejected 2"]
    now[0] = 61.0
    assert log.warning("rejected %d", 10)
    assert records[-2:] == ["7 similar lines were held back in the last minute", "rejected 10"]


def test_a_clerk_typing_markup_inside_cdata_is_text_not_a_declaration():
    from bot.wecom.callback import _parse_xml

    fields = _parse_xml("<xml><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[<!DOCTYPE 试试 <!-- x -->]]>"
                        "</Content></xml>", "payload")
    assert fields["Content"] == "<!DOCTYPE 试试 <!-- x -->"
    with pytest.raises(CallbackRejected):   # but a declaration outside the CDATA still is one
        _parse_xml("<xml><Content><![CDATA[hi]]></Content><!ENTITY a 'b'></xml>", "payload")


@pytest.mark.parametrize("payload", [
    xml({"Event": "change_external_contact", "ChangeType": "add_external_contact", "UserID": "zhangsan",
         "ExternalUserID": "wmABC", "State": "SZ001", "WelcomeCode": "CODE"}),
    xml({"Event": "change_external_chat", "ChangeType": "update", "ChatId": "wr1", "UpdateDetail": "add_member",
         "MemChangeList": ["wm1", "wm2"], "MemChangeCnt": "2"}),
    xml({"Event": "change_external_chat", "ChangeType": "update", "ChatId": "wr1", "UpdateDetail": "add_member",
         "MemChangeList": ["wm1"]}),
    "<xml><ToUserName><![CDATA[ww1]]></ToUserName><MsgType><![CDATA[text]]></MsgType>"
    "<Content><![CDATA[  接龙 <b>苹果</b> &amp; 梨  ]]></Content><Empty></Empty><Blank>  </Blank>"
    "<CreateTime>1763859600</CreateTime></xml>",
])
def test_payloads_parse_to_what_wechatpys_xmltodict_makes_of_them(payload):
    """The C parser behind _parse_xml gives the same fields as xmltodict (wechatpy's parser)."""
    import xmltodict
    from bot.wecom.callback import _parse_xml
    assert _parse_xml(payload, "payload") == xmltodict.parse(payload, disable_entities=True)["xml"]
