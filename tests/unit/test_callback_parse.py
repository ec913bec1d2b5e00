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
