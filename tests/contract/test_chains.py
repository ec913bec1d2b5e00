"""Group-buy chains through clerk commands (encrypted callbacks) and the HTTP page API."""

import re
import secrets
import threading
from collections import Counter

import httpx
import pytest
from sqlalchemy import select

from bot.db.engine import reads_of
from bot.db.models import Chain, ChainOrder
from bot.scheduler import close_due_chains

OPEN = "开团 阳光玫瑰葡萄 39.9元 {stock}份 每人限{limit} 截止周六18:00"


def replies(h, clerk):
    return [m["text"]["content"] for m in h.backend.app_messages if m["touser"] == clerk and not m["dropped"]]


def open_chain(h, stock=200, limit=2, clerk="zhangsan"):
    h.driver.clerk_says(clerk, OPEN.format(stock=stock, limit=limit))
    h.pump()
    reply = replies(h, clerk)[-1]
    token = re.search(r"/c/([\w-]+)", reply).group(1)
    return token, reply


def order(h, token, name="王阿姨", tail="1234", qty=1, rid=None, g=None):
    body = {"name": name, "phone_tail": tail, "qty": qty, "request_id": rid or secrets.token_hex(8)}
    if g:
        body["g"] = g
    return httpx.post(f"{h.bot.url}/c/{token}/orders", json=body, timeout=10)


def chain_row(h, token):
    with reads_of(h.c.sessions)() as s:
        return s.scalar(select(Chain).where(Chain.token == token))


def test_open_replies_with_the_link_and_per_group_links(synced):
    h = synced
    token, reply = open_chain(h)
    assert "已开团 #1：阳光玫瑰葡萄 ¥39.9，200份，每人限2份，截止 11-28 18:00" in reply
    assert f"{h.c.settings.public_base_url}/c/{token}" in reply
    assert all(f"?g={chat}" in reply for chat in h.groups["SZ001"])


def test_open_with_something_missing_says_exactly_what(synced):
    h = synced
    h.driver.clerk_says("zhangsan", "开团 阳光玫瑰葡萄 200份 截止周六18:00")
    h.pump()
    reply = replies(h, "zhangsan")[-1]
    assert "开团还缺：价格（如 39.9元）、每人限购（如 每人限2）" in reply and "例如" in reply
    with reads_of(h.c.sessions)() as s:
        assert s.scalar(select(Chain)) is None


def test_an_order_is_201_and_its_retry_200_with_the_same_token(synced):
    h = synced
    token, _ = open_chain(h, stock=3, limit=2)
    ok = order(h, token, qty=2, rid="request-0001")
    assert ok.status_code == 201 and ok.json()["remaining"] == 1
    again = order(h, token, qty=2, rid="request-0001")
    assert again.status_code == 200 and again.json()["order_token"] == ok.json()["order_token"]


def test_over_the_per_person_limit_is_409_with_what_is_still_allowed(synced):
    h = synced
    token, _ = open_chain(h, stock=3, limit=2)
    assert order(h, token, qty=2).status_code == 201
    over = order(h, token, qty=1)                                  # same person, limit 2 already held
    assert over.status_code == 409 and over.json()["allowed"] == 0 and "每人限购 2 份" in over.json()["message"]


def test_more_than_is_left_is_409_with_what_remains(synced):
    h = synced
    token, _ = open_chain(h, stock=3, limit=2)
    assert order(h, token, qty=2).status_code == 201
    too_many = order(h, token, name="李叔", tail="5678", qty=2)
    assert too_many.status_code == 409 and too_many.json()["remaining"] == 1 and "只剩 1 份" in too_many.json()["message"]


@pytest.mark.parametrize("bad", [{"qty": 0}, {"qty": 3}, {"tail": "12a4"}, {"name": ""}, {"name": "x" * 21}],
                         ids=["qty 0", "over the limit", "tail not digits", "no name", "name too long"])
def test_an_invalid_field_is_422(synced, bad):
    h = synced
    token, _ = open_chain(h, stock=3, limit=2)
    assert order(h, token, **{"name": "李叔", "tail": "5678", "qty": 1, **bad}).status_code == 422
    assert chain_row(h, token).stock_left == 3


def test_a_body_that_is_not_json_is_422_and_an_unknown_chain_404(synced):
    h = synced
    token, _ = open_chain(h, stock=3, limit=2)
    assert httpx.post(f"{h.bot.url}/c/{token}/orders", content=b"{not json", timeout=5).status_code == 422
    assert order(h, "nosuchtoken").status_code == 404


def test_sold_out_is_409_and_closed_is_410(synced):
    h = synced
    token, _ = open_chain(h, stock=3, limit=2)
    assert order(h, token, qty=2).status_code == 201
    assert order(h, token, name="李叔", tail="5678").status_code == 201
    sold_out = order(h, token, name="赵姐", tail="9999")
    assert sold_out.status_code == 409 and sold_out.json()["remaining"] == 0 and "抢完" in sold_out.json()["message"]
    h.driver.clerk_says("zhangsan", "截单 1")
    h.pump()
    assert order(h, token, name="孙哥", tail="1111").status_code == 410


def test_cancel_returns_stock_and_the_allowance(synced):
    h = synced
    token, _ = open_chain(h, stock=2, limit=2)
    placed = order(h, token, qty=2).json()
    res = httpx.delete(f"{h.bot.url}/c/{token}/orders/{placed['order_token']}")
    assert res.status_code == 200 and res.json()["remaining"] == 2
    assert httpx.delete(f"{h.bot.url}/c/{token}/orders/{placed['order_token']}").json()["remaining"] == 2
    assert order(h, token, qty=2).status_code == 201               # the allowance came back too
    assert chain_row(h, token).stock_left == 0


def test_the_page_shows_the_chain_and_escapes_what_members_type(synced):
    h = synced
    token, _ = open_chain(h)
    assert order(h, token, name="<b>x</b><script>x()", tail="4321", g=h.groups["SZ001"][0]).status_code == 201
    page = httpx.get(f"{h.bot.url}/c/{token}?g={h.groups['SZ001'][0]}")
    assert page.status_code == 200
    html = page.text
    assert "阳光玫瑰葡萄" in html and "¥39.9" in html and "剩余 <span class=\"left\" id=\"left\">199</span>" in html
    assert "<b>" not in html and "&lt;**" in html                   # masked, and escaped
    assert "尾号**21" in html and "×1" in html
    # nothing external: no stylesheet link, no script, image or form pointing off the host
    assert "<link" not in html and not re.search(r'(src|href|action)="(https?:)?//', html)


def test_without_javascript_a_form_post_redirects_back_with_the_order(synced):
    h = synced
    token, _ = open_chain(h)
    g = h.groups["SZ001"][0]
    page = httpx.get(f"{h.bot.url}/c/{token}?g={g}").text
    rid = re.search(r'name="request_id" value="([^"]+)"', page).group(1)
    form = {"name": "钱阿姨", "phone_tail": "2468", "qty": "2", "request_id": rid, "g": g}
    res = httpx.post(f"{h.bot.url}/c/{token}/orders?g={g}", data=form)
    assert res.status_code == 303 and "mine=" in res.headers["location"]
    shown = httpx.get(f"{h.bot.url}{res.headers['location']}").text
    assert "你已报名 2 份" in shown and "报名成功" in shown
    assert httpx.post(f"{h.bot.url}/c/{token}/orders?g={g}", data=form).status_code == 303   # a resubmit: same order
    with reads_of(h.c.sessions)() as s:
        (o,) = s.scalars(select(ChainOrder)).all()
    assert (o.qty, o.chat_id, o.store_code) == (2, g, "SZ001")
    bad = httpx.post(f"{h.bot.url}/c/{token}/orders?g={g}", data={**form, "request_id": "another-one-1", "qty": "5"})
    assert bad.status_code == 422 and "每人限购 2 份" in bad.text


@pytest.mark.slow
def test_a_crowd_never_oversells_and_limits_hold(synced):
    """300 simultaneous sign-ups (some people twice) for 100 portions, limit 2."""
    h = synced
    token, _ = open_chain(h, stock=100, limit=2)
    people = [(f"顾客{i % 120}", f"{i % 120:04d}") for i in range(300)]
    results = []
    lock = threading.Lock()
    barrier = threading.Barrier(30)

    def buyer(batch):
        barrier.wait()
        with httpx.Client(timeout=30) as http:
            for name, tail in batch:
                r = http.post(f"{h.bot.url}/c/{token}/orders",
                              json={"name": name, "phone_tail": tail, "qty": 2 if int(tail) % 3 else 1,
                                    "request_id": secrets.token_hex(8)})
                with lock:
                    results.append(r.status_code)

    threads = [threading.Thread(target=buyer, args=(people[i::30],)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with reads_of(h.c.sessions)() as s:
        orders = list(s.scalars(select(ChainOrder).where(ChainOrder.status == "active")))
    per_person = Counter()
    for o in orders:
        per_person[o.buyer_key] += o.qty
    assert sum(o.qty for o in orders) == 100 and chain_row(h, token).stock_left == 0
    assert max(per_person.values()) <= 2
    assert set(results) <= {201, 409} and results.count(201) == len(orders)


def test_close_at_the_deadline_sends_the_pick_list_and_a_signed_csv(synced):
    h = synced
    token, _ = open_chain(h, stock=10, limit=2)
    order(h, token, name="王阿姨", tail="1234", qty=2, g=h.groups["SZ001"][0])
    order(h, token, name="李叔", tail="5678", qty=1)
    h.clock.advance(days=6)                                        # past Saturday 18:00
    assert close_due_chains(h.c) == 1 and close_due_chains(h.c) == 0
    h.pump()
    pick = [m for m in replies(h, "zhangsan") if "备货名单" in m][0]
    assert "共 2 人、3 份，金额 119.7 元" in pick and "王** 尾号1234 ×2" in pick
    csv_url = re.search(r"(http\S+orders\.csv\S+)", pick).group(1)
    csv = httpx.get(csv_url)
    assert csv.status_code == 200 and "王阿姨" in csv.text and "1234" in csv.text
    assert httpx.get(csv_url.replace("sig=", "sig=0")).status_code == 403
    assert "已截单" in httpx.get(f"{h.bot.url}/c/{token}").text
    assert order(h, token, name="新人", tail="0000").status_code == 410


def test_chains_past_their_deadline_close_when_the_bot_starts_again(synced):
    from bot.scheduler import Scheduler
    h = synced
    token, _ = open_chain(h)
    h.stop_bot()
    h.clock.advance(days=7)
    c = h.start_bot()
    s = Scheduler(c)
    s.tick()                                                       # what `serve` does when it is elected
    s.stop()
    assert chain_row(h, token).status == "closed" and chain_row(h, token).closed_reason == "deadline"


def test_clerk_commands_list_orders_and_close_own_stores_only(synced):
    h = synced
    token, _ = open_chain(h, stock=4, limit=2)
    order(h, token, qty=2)
    order(h, token, name="李叔", tail="5678", qty=2)
    for text in ("团购", "名单 1"):
        h.driver.clerk_says("zhangsan", text)
    h.driver.clerk_says("lisi", "截单 1")                           # another store's clerk
    h.pump()
    listing = next(m for m in replies(h, "zhangsan") if m.startswith("进行中的团购"))
    names = next(m for m in replies(h, "zhangsan") if m.startswith("#1 阳光玫瑰葡萄："))
    assert "#1 阳光玫瑰葡萄：已报 4/4 份" in listing
    assert "2人 4份" in names and "王** 尾号1234 ×2" in names
    assert "没有你门店的 1 号团购" in replies(h, "lisi")[-1]
    assert chain_row(h, token).status == "open"
    milestones = [m for m in replies(h, "zhangsan") if "团购过半" in m or "团购已抢完" in m]
    assert len(milestones) == 2


# -- signed CSV links (security issue item 2): 403 for anything not ours, 410 after csv_link_days,
#    old admin_tokens in link_keys still verify -----------------------------------------------------

def _closed_with_csv_link(h):
    token, _ = open_chain(h, stock=10, limit=2)
    order(h, token, name="王阿姨", tail="1234", qty=2)
    h.driver.clerk_says("zhangsan", "截单 1")
    h.pump()
    pick = [m for m in replies(h, "zhangsan") if "备货名单" in m][-1]
    return token, re.search(r"(http\S+orders\.csv\S+)", pick).group(1)


def test_a_bad_csv_signature_answers_403_never_500(synced):
    h = synced
    token, url = _closed_with_csv_link(h)
    base, sig = url.split("&sig=")
    sidebar_sig = h.c.chains.links.sign("sidebar", (token, "zhangsan"), h.clock.now().replace(year=2027))
    for bad in ("签名", "%ff", "%ED%A0%80", "%00", "", sig[:-1], sig[:-3] + "AAA", "0" + sig, sig + "A",
                "x" * 5000, sidebar_sig):                     # another purpose's signature for the same subject
        r = httpx.get(f"{base}&sig={bad}")
        assert r.status_code == 403 and "链接无效" in r.text and "王阿姨" not in r.text, (bad, r.status_code)
    assert httpx.get(base).status_code == 403                                              # no sig at all
    assert httpx.get(url.replace("u=zhangsan", "u=lisi")).status_code == 403               # another clerk's
    assert httpx.get(url.replace("u=zhangsan", "u=%ff")).status_code == 403
    assert httpx.get(url.replace(token, "nosuchchain")).status_code == 403                 # unknown: learns nothing
    assert httpx.get(url).status_code == 200


def test_an_expired_csv_link_answers_410_and_says_how_to_get_a_fresh_one(synced):
    h = synced
    token, url = _closed_with_csv_link(h)
    h.clock.advance(days=7, seconds=-1)
    assert httpx.get(url).status_code == 200
    h.clock.advance(1)
    page = httpx.get(url)
    assert page.status_code == 410 and "已过期" in page.text and "名单 1" in page.text and "王阿姨" not in page.text
    assert httpx.get(url[:-3] + ("AAA" if not url.endswith("AAA") else "BBB")).status_code == 403
    fresh = h.c.chains.csv_link(chain_row(h, token))          # what 名单 <id> / the pick list mints now
    assert fresh != url and httpx.get(fresh).status_code == 200


def test_a_csv_link_minted_before_an_admin_token_rotation_still_works(synced):
    from pydantic import SecretStr

    h = synced
    _, url = _closed_with_csv_link(h)
    h.cfg = h.cfg.model_copy(update={"admin_token": SecretStr("rotated-admin-token"),
                                     "link_keys": [SecretStr("harness")]})          # the harness's old token
    h.restart_bot()
    r = httpx.get(url)
    assert r.status_code == 200 and "王阿姨" in r.text
    h.cfg = h.cfg.model_copy(update={"link_keys": []})
    h.restart_bot()
    assert httpx.get(url).status_code == 403


# -- 作废 void: a clerk voids fake orders by the number the list shows; the stock returns -----------

def last_reply(h, clerk, start):
    """The clerk's latest reply beginning so (milestone messages interleave with command replies)."""
    return [m for m in replies(h, clerk) if m.startswith(start)][-1]


def test_a_clerk_voids_fake_orders_by_their_list_number_and_the_stock_returns(synced):
    h = synced
    token, _ = open_chain(h, stock=6, limit=2)
    real = order(h, token, name="王阿姨", tail="1234", qty=2).json()
    fake = [order(h, token, name=f"假{i}", tail=f"000{i}", qty=2).json() for i in (1, 2)]
    assert chain_row(h, token).stock_left == 0
    h.driver.clerk_says("zhangsan", "名单 1")
    h.pump()
    listing = last_reply(h, "zhangsan", "#1 ")
    assert "1. 王** 尾号1234 ×2" in listing and "3. 假* 尾号0002 ×2" in listing and "作废 1-" in listing
    h.driver.clerk_says("lisi", "作废 1-2")                          # another store's clerk: refused
    h.driver.clerk_says("zhangsan", "作废 1-2~3")
    h.pump()
    assert "没有你门店的 1 号团购" in replies(h, "lisi")[-1]
    reply = last_reply(h, "zhangsan", "已作废")
    assert "已作废 #1 阳光玫瑰葡萄 2 单，退回 4 份，现剩 4 份" in reply
    assert "· 1-2 假* 尾号0001 ×2" in reply and "· 1-3 假* 尾号0002 ×2" in reply
    assert chain_row(h, token).stock_left == 4
    h.driver.clerk_says("zhangsan", "作废 1-3 1-9")                  # again, and one that is not there
    h.driver.clerk_says("zhangsan", "名单 1")
    h.pump()
    again, listing = last_reply(h, "zhangsan", "· 1-3"), last_reply(h, "zhangsan", "#1 ")
    assert "1-3：之前已作废，未改动" in again and "1-9：没有这一单，未改动" in again
    assert chain_row(h, token).stock_left == 4                      # nothing given back twice
    assert "1人 2份" in listing and "2. 假* 尾号0001 ×2 已作废" in listing and "1. 王** 尾号1234 ×2" in listing
    # The page: the fake ones are gone from the public list; their holder sees why; the stock is on sale again.
    page = httpx.get(f"{h.bot.url}/c/{token}?mine={fake[0]['order_token']}").text
    assert "已被店员作废" in page and "接龙名单（1人）" in page
    assert httpx.delete(f"{h.bot.url}/c/{token}/orders/{fake[0]['order_token']}").json()["remaining"] == 4
    assert order(h, token, name="李叔", tail="5678", qty=2).status_code == 201
    assert order(h, token, name="假1", tail="0001", qty=2).status_code == 201   # the allowance came back too
    assert real["order_token"] not in page


@pytest.mark.parametrize("text, expected", [
    ("作废 12-3", ((12, 3),)),
    ("void #12-3", ((12, 3),)),
    ("作废 12-3 12-5", ((12, 3), (12, 5))),
    ("作废 12-3，5、8", ((12, 3), (12, 5), (12, 8))),                  # bare numbers continue chain 12
    ("作废 12-3~5", ((12, 3), (12, 4), (12, 5))),
    ("作废 １２－３～４", ((12, 3), (12, 4))),                            # a phone keyboard's full-width signs
    ("作废 12-3 13-1", ((12, 3), (13, 1))),
    ("作废 12-3 12-3", ((12, 3),)),
])
def test_void_arguments(text, expected):
    from bot.commands.chains import parse_void_args
    assert parse_void_args(text.split(" ", 1)[1]).orders == expected


@pytest.mark.parametrize("text, hint", [
    ("3", "团购编号-序号"), ("12-0", "从 1 开始"), ("12-5~3", "从小到大"), ("12-1~101", "最多作废 100 单"),
    ("", "请写要作废的报名"), ("12-x", "看不懂"),
])
def test_void_arguments_that_say_what_is_wrong(text, hint):
    from bot.chains.parse import CommandSyntaxError
    from bot.commands.chains import parse_void_args
    with pytest.raises(CommandSyntaxError, match=hint):
        parse_void_args(text)


def test_help_lists_void(synced):
    h = synced
    h.driver.clerk_says("zhangsan", "帮助")
    h.pump()
    assert "作废 / void：" in replies(h, "zhangsan")[-1]


def test_a_voided_order_shows_as_voided_in_the_csv(synced):
    h = synced
    token, _ = open_chain(h, stock=6, limit=2)
    order(h, token, name="假1", tail="0001", qty=2)
    h.driver.clerk_says("zhangsan", "作废 1-1")
    h.driver.clerk_says("zhangsan", "截单 1")
    h.pump()
    pick = [m for m in replies(h, "zhangsan") if "备货名单" in m][-1]
    assert "已作废 1 单，不计入" in pick
    csv = httpx.get(re.search(r"(http\S+orders\.csv\S+)", pick).group(1)).text
    assert "假1,0001,2" in csv and csv.strip().splitlines()[-1].endswith(",已作废")
