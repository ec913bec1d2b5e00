"""The one WeCom client against the sandbox: tokens, retries, limits, uploads, the new endpoints."""

import threading
from datetime import datetime

import pytest

from bot.clock import SHANGHAI
from bot.db.engine import make_session_factory
from bot.wecom import errcodes
from bot.wecom.client import WeComClient, WeComError
from bot.wecom.token_store import SqlTokenStore


def new_client(h, **kw):
    c = h.c.client
    return WeComClient(c.corp_id, c.secret, agent_id=c.agent_id, api_base_url=c.API_BASE_URL,
                       token_store=kw.pop("token_store", SqlTokenStore(h.c.sessions, h.clock)), clock=h.clock, **kw)


def test_gettoken_goes_to_the_configured_base_url_and_is_reused(harness):
    client = harness.c.client
    client.external_contact_group_chat.list_owned(["zhangsan"])
    client.external_contact_group_chat.list_owned(["zhangsan"])
    assert harness.backend.calls["gettoken"] == 1


def test_token_expiry_mid_run_refreshes(harness):
    client = harness.c.client
    client.external_contact_group_chat.list_owned(["zhangsan"])
    harness.clock.advance(seconds=7300)
    assert client.external_contact_group_chat.list_owned(["zhangsan"])
    assert harness.backend.calls["gettoken"] == 2


def test_early_invalidation_refreshes_once_and_retries(harness):
    client = harness.c.client
    client.external_contact_group_chat.list_owned(["zhangsan"])
    harness.backend.invalidate_tokens()            # WeCom invalidates early 「出于运营需要」
    assert client.external_contact_group_chat.list_owned(["zhangsan"])
    assert harness.backend.calls["gettoken"] == 2
    assert harness.backend.errors["externalcontact/groupchat/list:40014"] == 1


def test_a_token_rejected_twice_is_not_refreshed_forever(harness):
    client = harness.c.client
    harness.backend.inject("externalcontact/groupchat/list", 40014, times=5)
    with pytest.raises(WeComError) as e:
        client.external_contact_group_chat.list_owned(["zhangsan"])
    assert e.value.errcode == 40014
    assert harness.backend.calls["externalcontact/groupchat/list"] == 2   # the call and one retry


def test_wrong_secret_is_a_clear_error_not_a_loop(harness):
    c = harness.c.client
    bad = WeComClient(c.corp_id, "wrong-secret", agent_id=1, api_base_url=c.API_BASE_URL, clock=harness.clock)
    with pytest.raises(WeComError) as e:
        bad.external_contact_group_chat.list_owned(["zhangsan"])
    assert e.value.errcode == errcodes.INVALID_SECRET and harness.backend.calls["gettoken"] == 1


def test_45009_backs_off_then_succeeds_when_the_window_turns(harness):
    h = harness
    h.clock.advance(seconds=55)                   # 09:00:55, near the end of the minute
    h.backend.rules.api_limits["externalcontact/groupchat/list"] = 1
    client = new_client(h, max_attempts=6, backoff_base=0.5)
    client.external_contact_group_chat.list_owned(["zhangsan"])
    started = h.clock.timestamp()
    assert client.external_contact_group_chat.list_owned(["zhangsan"])   # waits into the next minute
    assert h.backend.errors["externalcontact/groupchat/list:45009"] >= 1
    assert h.clock.now().minute == 1 and h.clock.timestamp() - started < 30


def test_45009_past_the_budget_raises_with_the_errcode(harness):
    h = harness
    h.backend.rules.api_limits["externalcontact/groupchat/list"] = 0
    client = new_client(h, max_attempts=3)
    with pytest.raises(WeComError) as e:
        client.external_contact_group_chat.list_owned(["zhangsan"])
    assert e.value.errcode == errcodes.API_FREQ_LIMIT
    assert h.backend.calls["externalcontact/groupchat/list"] == 3


def test_system_busy_is_retried(harness):
    harness.backend.inject("externalcontact/groupchat/list", -1, times=2)
    assert harness.c.client.external_contact_group_chat.list_owned(["zhangsan"])


def test_upload_is_resent_from_bytes_after_a_failure(harness):
    harness.backend.inject("media/upload", -1, times=1)
    png = b"\x89PNG" + b"x" * 100
    res = harness.c.client.media.upload("image", png, filename="a.png", content_type="image/png")
    assert harness.backend.media[res["media_id"]]["size"] == len(png)
    assert harness.backend.calls["media/upload"] == 2


def test_upload_accepts_a_file_object_and_reads_it_once(harness, tmp_path):
    f = tmp_path / "q.png"
    f.write_bytes(b"\x89PNG" + b"y" * 50)
    harness.backend.inject("media/upload", -1, times=1)
    with f.open("rb") as fh:
        res = harness.c.client.media.upload("image", ("q.png", fh, "image/png"))
    assert harness.backend.media[res["media_id"]]["size"] == 54


def test_non_retryable_errors_keep_their_errcode(harness):
    with pytest.raises(WeComError) as e:
        harness.c.client.external_contact_group_chat.get("wrNOSUCHCHAT")
    assert e.value.errcode == errcodes.INVALID_CHAT_ID and e.value.endpoint == "externalcontact/groupchat/get"


def test_network_errors_are_retried_then_reported(harness):
    c = harness.c.client
    dead = WeComClient(c.corp_id, c.secret, agent_id=1, api_base_url="http://127.0.0.1:9/cgi-bin/",
                       clock=harness.clock, timeout=0.5, max_attempts=2)
    with pytest.raises(WeComError) as e:
        dead.external_contact_group_chat.list_owned(["zhangsan"])
    assert e.value.errcode == errcodes.NETWORK_ERROR


def test_many_threads_share_one_gettoken(harness):
    """No thundering herd: 3 'processes' (clients with their own store objects) × 8 threads."""
    h = harness
    clients = [new_client(h, token_store=SqlTokenStore(make_session_factory(h.c.engine), h.clock)) for _ in range(3)]
    errors = []

    def call(client):
        try:
            client.external_contact_group_chat.list_owned(["zhangsan"])
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=call, args=(c,)) for c in clients for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and h.backend.calls["gettoken"] == 1


def test_join_way_and_groupmsg_endpoints(harness):
    h = harness
    client = h.c.client
    chats = h.groups["SZ001"]
    config_id = client.join_way.add_join_way(chat_ids=chats, state="SZ001", room_base_name="深圳科技园店")
    way = client.join_way.get_join_way(config_id)
    assert way["chat_id_list"] == chats and way["auto_create_room"] == 1 and way["qr_code"].endswith(".png")
    client.join_way.update_join_way(config_id, chat_ids=chats[:1], state="SZ001", room_base_name="店")
    assert client.join_way.get_join_way(config_id)["chat_id_list"] == chats[:1]
    client.join_way.del_join_way(config_id)
    with pytest.raises(WeComError):
        client.join_way.get_join_way(config_id)
    group = client.external_contact_group_chat.get(chats[0], need_name=True)
    assert group["owner"] == "zhangsan" and group["member_version"]
    res = client.external_contact.add_msg_template({"chat_type": "group", "sender": "zhangsan",
                                                    "chat_id_list": chats, "text": {"content": "今日福利"}})
    msgid = res["msgid"]
    now = int(h.clock.timestamp())
    listed = client.groupmsg.get_groupmsg_list_v2(chat_type="group", start_time=now - 3600, end_time=now + 60)
    assert [m["msgid"] for m in listed["group_msg_list"]] == [msgid]
    assert client.groupmsg.get_groupmsg_task(msgid)["task_list"][0]["status"] == 0
    h.backend.confirm_groupmsg(msgid)
    results = client.groupmsg.get_groupmsg_send_result(msgid, "zhangsan")["send_list"]
    assert {r["status"] for r in results} == {1}
    for _ in range(3):
        client.groupmsg.remind_groupmsg_send(msgid)
    with pytest.raises(WeComError):
        client.groupmsg.remind_groupmsg_send(msgid)   # at most 3 in 24 h
    client.groupmsg.cancel_groupmsg_send(msgid)


def test_daily_cap_makes_the_second_mass_message_status_3(harness):
    h = harness
    client, chats = h.c.client, h.groups["SZ001"]
    ids = [client.external_contact.add_msg_template({"chat_type": "group", "sender": "zhangsan",
                                                     "chat_id_list": chats, "text": {"content": f"slot {i}"}})["msgid"]
           for i in range(2)]
    for m in ids:
        h.backend.confirm_groupmsg(m)
    second = client.groupmsg.get_groupmsg_send_result(ids[1], "zhangsan")["send_list"]
    assert {r["status"] for r in second} == {3}


def test_fake_clock_starts_in_shanghai(clock):
    assert clock.now() == datetime(2026, 11, 23, 9, 0, tzinfo=SHANGHAI)
