"""Tokens are used until they expire or WeCom rejects them: at most one gettoken per token lifetime,
across processes, whatever WeCom answers as expires_in (reliability issue, item 2)."""

import threading

import pytest

from bot.db.engine import make_engine, make_session_factory
from bot.wecom.client import WeComClient
from bot.wecom.token_store import MemoryTokenStore, SqlTokenStore

TTL = 7200


def new_client(h, token_store):
    c = h.c.client
    return WeComClient(c.corp_id, c.secret, agent_id=c.agent_id, api_base_url=c.API_BASE_URL,
                       token_store=token_store, clock=h.clock)


def list_groups(client) -> None:
    assert client.external_contact_group_chat.list_owned(["zhangsan"]) is not None


def test_a_thousand_calls_in_a_tokens_last_minutes_make_no_gettoken_when_wecom_answers_the_same_token(harness):
    """Through HTTP: 1,000 calls in the last 5 minutes, one every 0.3 s; gettoken would answer the
    same token with what remains of its life."""
    h = harness
    client = h.c.client
    list_groups(client)
    assert h.backend.calls["gettoken"] == 1
    h.clock.advance(seconds=TTL - 300.3)
    for _ in range(1000):
        h.clock.advance(seconds=0.3)
        list_groups(client)
    assert h.backend.calls["gettoken"] == 1
    assert not h.backend.errors
    h.clock.advance(seconds=1)                   # now it has run out: one gettoken, a new token
    list_groups(client)
    list_groups(client)
    assert h.backend.calls["gettoken"] == 2 and not h.backend.errors


def test_a_thousand_calls_from_three_processes_in_a_tokens_last_minutes_make_at_most_one_gettoken(harness):
    """Three 'processes' (an engine and a store each, as `serve` builds them) share the token row;
    1,000 token reads spread over the token's last 5 minutes and the first one after it, the fetch
    being the real gettoken over HTTP: one gettoken for the old token, one for the new."""
    h = harness
    engines = [make_engine(h.database_url) for _ in range(3)]
    try:
        stores = [SqlTokenStore(make_session_factory(e), h.clock) for e in engines]
        client = new_client(h, stores[0])
        key = client.access_token_key
        first = stores[0].get(key, client._gettoken)
        assert h.backend.calls["gettoken"] == 1
        h.clock.advance(seconds=TTL - 300)
        seen = set()
        for i in range(1000):
            h.clock.advance(seconds=0.36)        # 1,000 × 0.36 s = 6 minutes: past the expiry
            seen.add(stores[i % 3].get(key, client._gettoken))
        assert h.backend.calls["gettoken"] == 2
        assert len(seen) == 2 and first in seen
    finally:
        for e in engines:
            e.dispose()


def test_concurrent_processes_refresh_an_expired_token_once(harness):
    h = harness
    engines = [make_engine(h.database_url) for _ in range(3)]
    try:
        # poll_seconds=0: waiters must not move the shared fake clock while they wait
        stores = [SqlTokenStore(make_session_factory(e), h.clock, poll_seconds=0) for e in engines]
        clients = [new_client(h, s) for s in stores]
        list_groups(clients[0])
        h.clock.advance(seconds=TTL)
        errors = []

        def call(client):
            try:
                for _ in range(5):
                    list_groups(client)
            except Exception as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=call, args=(c,)) for c in clients for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert h.backend.calls["gettoken"] == 2 and not h.backend.errors
    finally:
        for e in engines:
            e.dispose()


@pytest.mark.parametrize("store", ["memory", "sql"])
def test_a_token_answered_with_30s_left_is_used_for_those_30s_then_fetched_once(harness, store):
    """A process starting in the corp token's last 30 s gets the same token with expires_in 30."""
    h = harness
    c = h.c.client
    h.backend.gettoken(c.corp_id, c.secret)      # the corp's token exists (another app instance, say)
    h.clock.advance(seconds=TTL - 30)
    client = new_client(h, MemoryTokenStore(h.clock) if store == "memory" else SqlTokenStore(h.c.sessions, h.clock))
    list_groups(client)
    assert h.backend.calls["gettoken"] == 2
    for _ in range(29):
        h.clock.advance(seconds=1)
        list_groups(client)
    assert h.backend.calls["gettoken"] == 2      # nothing before those 30 s are up
    h.clock.advance(seconds=1)
    list_groups(client)
    list_groups(client)
    assert h.backend.calls["gettoken"] == 3 and not h.backend.errors


def test_a_token_rejected_as_expired_is_refreshed_once(harness):
    """WeCom says 7200 s whatever remains (rules.gettoken_repeat = full): the bot learns the real
    expiry from 42001, refreshes once and the call goes through."""
    h = harness
    h.backend.rules.update(gettoken_repeat="full")
    list_groups(h.c.client)
    h.clock.advance(seconds=TTL - 30)
    client = new_client(h, MemoryTokenStore(h.clock))
    list_groups(client)                          # the same token, "7200 s" left, 30 s really
    assert h.backend.calls["gettoken"] == 2
    h.clock.advance(seconds=31)
    list_groups(client)                          # 42001, one refresh, the call again
    assert h.backend.errors == {"externalcontact/groupchat/list:42001": 1}
    assert h.backend.calls["gettoken"] == 3
    assert h.backend.calls["externalcontact/groupchat/list"] == 4
    for _ in range(10):
        list_groups(client)
    assert h.backend.calls["gettoken"] == 3


def test_a_token_rejected_as_expired_is_refreshed_once_across_processes(harness):
    """Two processes share the row: the first one rejected refreshes; the other picks the new token
    up from the row after its own 42001, with no gettoken of its own."""
    h = harness
    h.backend.rules.update(gettoken_repeat="full")
    list_groups(h.c.client)
    h.clock.advance(seconds=TTL - 30)
    h.c.client.tokens.invalidate(h.c.client.access_token_key, h.c.client.access_token)
    other = new_client(h, SqlTokenStore(make_session_factory(h.c.engine), h.clock))
    list_groups(other)                           # stores the same token as "7200 s"
    list_groups(h.c.client)                      # reads it from the row
    assert h.backend.calls["gettoken"] == 2
    h.clock.advance(seconds=31)
    list_groups(other)
    list_groups(h.c.client)
    assert h.backend.calls["gettoken"] == 3
    assert h.backend.errors == {"externalcontact/groupchat/list:42001": 2}


@pytest.mark.parametrize("store", ["memory", "sql"])
def test_jsapi_tickets_are_fetched_once_per_lifetime(harness, store):
    """The tickets share the store with the token their fetch needs (a lock per key, not per store)."""
    h = harness
    client = new_client(h, MemoryTokenStore(h.clock) if store == "memory" else SqlTokenStore(h.c.sessions, h.clock))
    first = client.agent_ticket(), client.corp_ticket()
    assert (h.backend.calls["ticket/get"], h.backend.calls["get_jsapi_ticket"]) == (1, 1)
    h.clock.advance(seconds=TTL - 301)
    for _ in range(300):
        h.clock.advance(seconds=1)
        assert (client.agent_ticket(), client.corp_ticket()) == first
    assert (h.backend.calls["ticket/get"], h.backend.calls["get_jsapi_ticket"]) == (1, 1)
    h.clock.advance(seconds=1)
    assert client.agent_ticket() != first[0] and client.corp_ticket() != first[1]
    assert (h.backend.calls["ticket/get"], h.backend.calls["get_jsapi_ticket"]) == (2, 2)


@pytest.mark.parametrize("store", ["memory", "sql"])
def test_a_token_answered_with_expires_in_0_is_kept_a_second_not_fetched_on_every_call(engine, clock, store):
    fetched = []

    def fetch():
        fetched.append(clock.now())
        return f"token-{len(fetched)}", 0

    tokens = MemoryTokenStore(clock) if store == "memory" else SqlTokenStore(make_session_factory(engine), clock)
    assert {tokens.get("k", fetch) for _ in range(100)} == {"token-1"}
    clock.advance(seconds=1)
    assert tokens.get("k", fetch) == "token-2" and len(fetched) == 2
