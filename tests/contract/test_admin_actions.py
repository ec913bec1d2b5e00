"""The ops console's broadcast and chain pages and its POST actions, over HTTP on both databases: who sees
and may do what, CSRF, Bearer, each action doing what it says once (a second submit changes nothing), the
pages agreeing with `wecom-bot report`'s figures, and markup in names staying inert."""

from __future__ import annotations

import re
import secrets
from datetime import date, datetime

import httpx
import pytest
from sqlalchemy import select

from bot.broadcast.report import slot_figures
from bot.clock import SHANGHAI
from bot.config import Store as StoreConfig
from bot.db.engine import reads_of
from bot.db.models import AdminAction, Chain, Outbox, SlotDelivery
from bot.sandbox.harness import Harness
from bot.scheduler import run_slot
from tests.conftest import ROOT, STORES
from tests.contract.test_admin import BEARER, login

MONDAY = date(2026, 11, 23)
OPEN = "开团 {title} 39.9元 20份 每人限2 截止周六18:00"


@pytest.fixture
def h(db_url, clock):
    h = Harness(database_url=db_url, stores=STORES, clock=clock, calendar_dir=ROOT / "content_calendar",
                workers=False, settings_overrides={"ops_userids": ["ops_lead"]})
    h.start()
    h.backend.add_member("ops_lead")
    report = h.sync()
    assert not report.failed, report.summary()
    yield h
    h.stop()


def at(h, hh: int, mm: int = 0) -> None:
    target = datetime(MONDAY.year, MONDAY.month, MONDAY.day, hh, mm, tzinfo=SHANGHAI).timestamp()
    h.clock.advance(max(0.0, target - h.clock.timestamp()))


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def post(http: httpx.Client, path: str, **form) -> httpx.Response:
    return http.post(path, data=form)


def bearer() -> httpx.Client:
    return httpx.Client(headers=BEARER)


def flash(http: httpx.Client, r: httpx.Response) -> str:
    """Follow the 303 and read the flash message shown once."""
    assert r.status_code == 303, r.text
    page = http.get(r.headers["location"])
    assert page.status_code == 200
    m = re.search(r'id="flash" role="status">([^<]+)<', page.text)
    assert m, "no flash message after the action"
    again = http.get(r.headers["location"]).text
    assert 'id="flash"' not in again                         # shown once
    return m.group(1)


def rows(h, slot: str, store: str | None = None) -> list[SlotDelivery]:
    with reads_of(h.c.sessions)() as s:
        q = select(SlotDelivery).where(SlotDelivery.day == MONDAY.isoformat(), SlotDelivery.slot == slot)
        if store:
            q = q.where(SlotDelivery.store_code == store)
        return list(s.scalars(q.order_by(SlotDelivery.chat_id)))


def actions(h) -> list[AdminAction]:
    with reads_of(h.c.sessions)() as s:
        return list(s.scalars(select(AdminAction).order_by(AdminAction.id)))


def reminders_to(h, userid: str, slot: str) -> list[dict]:
    return [m for m in h.backend.app_messages if m["touser"] == userid and m["msgtype"] == "textcard"
            and not m["dropped"] and m["textcard"]["title"].startswith(slot)]


def templates_of(h, creator: str) -> list[dict]:
    return [t for t in h.backend.templates.values() if t["creator"] == creator]


def open_chain(h, clerk: str = "zhangsan", title: str = "阳光玫瑰葡萄") -> Chain:
    h.driver.clerk_says(clerk, OPEN.format(title=title))
    h.pump()
    with reads_of(h.c.sessions)() as s:
        return s.scalars(select(Chain).order_by(Chain.id.desc())).first()


def sign_up(h, chain: Chain, tail: str = "1234", name: str = "王阿姨") -> None:
    r = httpx.post(f"{h.bot.url}/c/{chain.token}/orders",
                   json={"name": name, "phone_tail": tail, "qty": 1, "request_id": secrets.token_hex(8)})
    assert r.status_code == 201, r.text


def test_the_broadcasts_page_counts_what_report_counts(h):
    at(h, 10)
    run_slot(h.c, "10:00", MONDAY)
    h.clock.advance(60)
    h.pump()
    page = httpx.get(f"{h.bot.url}/admin/broadcasts", headers=BEARER)
    assert page.status_code == 200
    with reads_of(h.c.sessions)() as s:
        [f] = [f for f in slot_figures(s, MONDAY) if f.slot == "10:00"]
    row = re.search(r'class="slot-row" data-slot="10:00">(.*?)</tr>', page.text, re.S).group(1)
    cells = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r'<td class="n[^"]*">(.*?)</td>', row, re.S)]
    assert cells == [str(f.groups), f"{f.mass_sent}/{f.mass}", str(f.mass_awaiting), f"{f.tapped}/{f.reminder}",
                     str(f.paused), str(f.not_fired), str(sum(f.failed.values()))]
    assert f.groups == 6
    # per store, and per group with a store filter
    block = page.text.split('id="slot-1000"', 1)[1].split("</section>", 1)[0]
    assert re.findall(r'class="store-row" data-code="(\w+)"', block) == ["SZ001", "SZ002"]
    one = httpx.get(f"{h.bot.url}/admin/broadcasts", headers=BEARER, params={"store": "SZ002", "date": "2026-11-23"})
    block = one.text.split('id="slot-1000"', 1)[1].split("</section>", 1)[0]
    assert block.count('class="group-row"') == len(rows(h, "10:00", "SZ002"))
    assert "待群主确认" in block                                  # SZ002's mass message waits for its owners
    # another day: nothing to act on
    other = httpx.get(f"{h.bot.url}/admin/broadcasts", headers=BEARER, params={"date": "2026-11-20"})
    assert other.status_code == 200 and "/admin/broadcasts/fire" not in other.text


def test_a_clerk_sees_and_acts_on_their_stores_only(h):
    sz2_chain = open_chain(h, clerk="lisi", title="海岸城车厘子")
    mine = open_chain(h, clerk="zhangsan")
    http = login(h, "zhangsan")
    page = http.get("/admin/broadcasts").text
    assert "SZ002" not in page and "深圳海岸城店" not in page
    assert http.get("/admin/broadcasts", params={"store": "SZ002"}).status_code == 404
    chains = http.get("/admin/chains").text
    assert re.findall(r'class="chain-row" data-id="(\d+)"', chains) == [str(mine.id)]
    assert http.get(f"/admin/chains/{sz2_chain.id}").status_code == 404
    token = csrf_of(page)
    for path, form in (("/admin/broadcasts/fire", {"store": "SZ002", "slot": "10:00"}),
                       ("/admin/broadcasts/pause", {"store": "SZ002", "slot": "12:00"}),
                       ("/admin/stores/SZ002/sync", {}), (f"/admin/chains/{sz2_chain.id}/close", {})):
        r = post(http, path, csrf=token, **form)
        assert r.status_code == 403 and "无权操作" in r.text, path
    assert rows(h, "10:00", "SZ002") == [] and actions(h) == []
    with reads_of(h.c.sessions)() as s:
        assert s.get(Chain, sz2_chain.id).status == "open"
    # their own store: allowed
    r = post(http, "/admin/broadcasts/pause", csrf=token, store="SZ001", slot="12:00")
    assert "已暂停 SZ001 的 12:00" in flash(http, r)
    assert [a.userid for a in actions(h)] == ["zhangsan"]


def test_every_action_wants_the_sessions_csrf_token(h):
    chain = open_chain(h)
    http = login(h, "ops_lead")
    token = csrf_of(http.get("/admin/broadcasts").text)
    for path, form in (("/admin/broadcasts/fire", {"store": "SZ001", "slot": "10:00"}),
                       ("/admin/broadcasts/pause", {"store": "SZ001", "slot": "12:00"}),
                       ("/admin/broadcasts/resume", {"store": "SZ001", "slot": "12:00"}),
                       ("/admin/stores/SZ001/sync", {}), (f"/admin/chains/{chain.id}/close", {})):
        for bad in ({}, {"csrf": "x" * len(token)}):
            r = post(http, path, **form, **bad)
            assert r.status_code == 403 and "CSRF" in r.text, path
    assert actions(h) == [] and rows(h, "10:00") == []
    with reads_of(h.c.sessions)() as s:
        assert s.get(Chain, chain.id).status == "open"
        assert not s.scalars(select(Outbox).where(Outbox.kind == "sync_store")).all()
    # a session's token from another browser's session is no good either
    other = csrf_of(login(h, "ops_lead").get("/admin/broadcasts").text)
    assert post(http, "/admin/broadcasts/fire", csrf=other, store="SZ001", slot="10:00").status_code == 403


def test_bearer_acts_without_a_form_token(h):
    r = bearer().post(f"{h.bot.url}/admin/broadcasts/pause", data={"store": "SZ001", "slot": "16:00"})
    assert r.status_code == 303 and r.headers["location"] == "/admin/broadcasts?store=SZ001"
    assert {x.status for x in rows(h, "16:00", "SZ001")} == {"paused"}
    assert [(a.userid, a.action, a.store_code, a.target) for a in actions(h)] == [("admin_token", "pause", "SZ001", "16:00")]
    assert bearer().post(f"{h.bot.url}/admin/broadcasts/fire", data={"store": "SZ001", "slot": "09:30"}).status_code == 400
    gone = bearer().post(f"{h.bot.url}/admin/broadcasts/fire", data={"store": "NOPE1", "slot": "10:00"})
    assert gone.status_code == 404 and "NOPE1 不存在" in gone.text
    assert bearer().post(f"{h.bot.url}/admin/chains/999/close").status_code == 404
    assert bearer().post(f"{h.bot.url}/admin/stores/NOPE1/sync").status_code == 404
    # what no store or chain can be never reaches a query (a NUL: PostgreSQL refuses it, a 500)
    assert bearer().post(f"{h.bot.url}/admin/broadcasts/pause", data={"store": "SZ\x00", "slot": "10:00"}).status_code == 404
    assert bearer().post(f"{h.bot.url}/admin/chains/{2 ** 40}/close").status_code == 404
    assert bearer().get(f"{h.bot.url}/admin/chains/{2 ** 40}").status_code == 404
    assert bearer().get(f"{h.bot.url}/admin/broadcasts", params={"store": "SZ\x00"}).status_code == 404
    assert len(actions(h)) == 1
    wrong = httpx.post(f"{h.bot.url}/admin/broadcasts/fire", data={"store": "SZ001", "slot": "10:00"},
                       headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401


def test_firing_one_store_early_never_sends_a_group_its_slot_twice(h):
    http = login(h, "ops_lead")
    token = csrf_of(http.get("/admin/broadcasts").text)
    at(h, 9, 30)
    # SZ001's 12:00 (a flash sale) is its mass message on Monday: fire it ahead for SZ001 alone
    r = post(http, "/admin/broadcasts/fire", csrf=token, store="SZ001", slot="12:00")
    text = flash(http, r)
    assert text.startswith("已为 SZ001 发出 12:00：群发")
    h.pump()
    assert len(templates_of(h, "zhangsan")) == 1
    assert {x.status for x in rows(h, "12:00", "SZ001")} == {"awaiting"} and rows(h, "12:00", "SZ002") == []
    again = post(http, "/admin/broadcasts/fire", csrf=token, store="SZ001", slot="12:00")
    assert "已经发过了" in flash(http, again)
    # the day's slots still come for SZ001: 10:00 was planned too, and fires at its time
    at(h, 10)
    run_slot(h.c, "10:00", MONDAY)
    h.clock.advance(60)
    h.pump()
    assert len(reminders_to(h, "zhangsan", "10:00")) == 1
    at(h, 12)
    run_slot(h.c, "12:00", MONDAY)
    h.clock.advance(60)
    h.pump()
    assert len(templates_of(h, "zhangsan")) == 1                   # not a second mass message
    assert reminders_to(h, "zhangsan", "12:00") == []
    assert {x.status for x in rows(h, "12:00", "SZ002")} - {"planned"}  # the rest of the chain fired
    with reads_of(h.c.sessions)() as s:
        for chat in h.groups["SZ001"]:
            n = s.scalars(select(SlotDelivery).where(SlotDelivery.day == MONDAY.isoformat(),
                                                     SlotDelivery.chat_id == chat)).all()
            assert [x.mode for x in n].count("mass") == 1
    recorded = [(a.action, a.detail["changed"]) for a in actions(h)]
    assert recorded == [("fire", True), ("fire", False)]


def test_a_reminder_slot_fired_for_one_store_still_reminds_the_clerk_of_the_rest(db_url, clock):
    # wangwu serves SZ002 and SZ003 (as in test_groups): SZ003's 12:00 fired alone must not swallow
    # the reminder for his SZ002 groups when the slot fires for everyone
    stores = STORES + [{"code": "SZ003", "name": "深圳南山店", "clerks": ["zhaoliu"]}]
    with Harness(database_url=db_url, stores=stores, clock=clock, calendar_dir=ROOT / "content_calendar",
                 workers=False) as hh:
        assert not hh.sync().failed
        hh.cfg.stores[2] = StoreConfig(code="SZ003", name="深圳南山店", clerks=["zhaoliu", "wangwu"])
        assert not hh.sync().failed
        hh.driver.admin_changes_owner(hh.groups["SZ003"][0], "wangwu")
        hh.pump()
        at(hh, 10)
        run_slot(hh.c, "10:00", MONDAY)                           # the day planned; 12:00 is a reminder slot
        at(hh, 11, 50)
        r = bearer().post(f"{hh.bot.url}/admin/broadcasts/fire", data={"store": "SZ003", "slot": "12:00"})
        assert r.status_code == 303
        at(hh, 12)
        run_slot(hh.c, "12:00", MONDAY)
        hh.clock.advance(60)
        hh.pump()
        cards = [m["textcard"]["description"] for m in reminders_to(hh, "wangwu", "12:00")]
        assert len(cards) == 2                                      # one per firing, each its own groups
        assert "1 个群待发送" in cards[0] and "2 个群待发送" in cards[1]
        mine = [x for x in rows(hh, "12:00") if x.owner == "wangwu"]
        assert len(mine) == 3 and {x.status for x in mine} == {"reminded"}


def test_pause_then_resume_a_slot_for_a_store(h):
    http = login(h, "ops_lead")
    token = csrf_of(http.get("/admin/broadcasts").text)
    r = post(http, "/admin/broadcasts/pause", csrf=token, store="SZ001", slot="12:00", back="/admin/broadcasts")
    assert r.headers["location"] == "/admin/broadcasts"
    assert "已暂停 SZ001 的 12:00" in flash(http, r)
    assert "已经是暂停状态" in flash(http, post(http, "/admin/broadcasts/pause", csrf=token, store="SZ001", slot="12:00"))
    at(h, 10)
    run_slot(h.c, "10:00", MONDAY)                                # planning ahead did not cost 10:00
    at(h, 12)
    run_slot(h.c, "12:00", MONDAY)
    h.clock.advance(60)
    h.pump()
    assert {x.status for x in rows(h, "10:00", "SZ001")} == {"reminded"}
    assert {x.status for x in rows(h, "12:00", "SZ001")} == {"paused"} and templates_of(h, "zhangsan") == []
    page = http.get("/admin/broadcasts", params={"store": "SZ001"}).text
    assert "运营在后台暂停了这个时段" in page and "/admin/broadcasts/resume" in page
    text = flash(http, post(http, "/admin/broadcasts/resume", csrf=token, store="SZ001", slot="12:00"))
    assert "已恢复 SZ001 的 12:00" in text and "时段已过" in text
    assert {x.status for x in rows(h, "12:00", "SZ001")} == {"planned"}
    assert "无需恢复" in flash(http, post(http, "/admin/broadcasts/resume", csrf=token, store="SZ001", slot="12:00"))
    flash(http, post(http, "/admin/broadcasts/fire", csrf=token, store="SZ001", slot="12:00"))
    h.pump()
    assert len(templates_of(h, "zhangsan")) == 1
    assert "已经发出" in flash(http, post(http, "/admin/broadcasts/pause", csrf=token, store="SZ001", slot="12:00"))
    assert [a.action for a in actions(h)] == ["pause", "pause", "resume", "resume", "fire", "pause"]


def test_resync_one_store_goes_through_the_outbox(h):
    http = login(h, "ops_lead")
    token = csrf_of(http.get("/admin/stores/SZ001").text)
    gone = [cid for cid, w in h.backend.join_ways.items() if w["state"] == "SZ001"]
    for cid in gone:
        del h.backend.join_ways[cid]
    r = post(http, "/admin/stores/SZ001/sync", csrf=token)
    assert r.headers["location"] == "/admin/stores/SZ001"
    assert "已提交 SZ001 的重新同步" in flash(http, r)
    assert "已在排队" in flash(http, post(http, "/admin/stores/SZ001/sync", csrf=token))
    with reads_of(h.c.sessions)() as s:
        [row] = s.scalars(select(Outbox).where(Outbox.kind == "sync_store")).all()
    assert row.status == "pending" and not [w for w in h.backend.join_ways.values() if w["state"] == "SZ001"]
    h.pump()
    with reads_of(h.c.sessions)() as s:
        row = s.get(Outbox, row.id)
    assert row.status == "done" and "join way gone at WeCom: recreated" in row.result["changes"]
    assert [w for w in h.backend.join_ways.values() if w["state"] == "SZ001"]
    assert "群二维码在企业微信已被删除，已重建" in http.get("/admin/stores/SZ001").text
    h.clock.advance(2)                                            # done: a new request queues a new run
    assert "已提交" in flash(http, post(http, "/admin/stores/SZ001/sync", csrf=token))
    h.pump()
    with reads_of(h.c.sessions)() as s:
        last = s.scalars(select(Outbox).where(Outbox.kind == "sync_store").order_by(Outbox.id.desc())).first()
    assert last.status == "done" and last.result["changes"] == []   # nothing left to change
    assert [a.action for a in actions(h)] == ["sync", "sync", "sync"]


def test_chains_pages_and_closing_a_chain(h):
    chain = open_chain(h)
    sign_up(h, chain, tail="1234")
    sign_up(h, chain, tail="5678", name="李先生")
    http = login(h, "ops_lead")
    listing = http.get("/admin/chains").text
    assert f'data-id="{chain.id}"' in listing and "2/20" in listing and "进行中" in listing
    csv_link = re.search(r'class="csv" href="([^"]+)"', listing).group(1).replace("&amp;", "&")
    csv = httpx.get(csv_link)                                     # the chain's own signed CSV route
    assert csv.status_code == 200 and "1234" in csv.text
    detail = http.get(f"/admin/chains/{chain.id}").text
    assert detail.count('class="order-row active"') == 2
    assert "**34" in detail and "**78" in detail and "1234" not in detail and "5678" not in detail
    assert "王阿姨" not in detail and "王**" in detail
    r = post(http, f"/admin/chains/{chain.id}/close", csrf=csrf_of(detail))
    assert r.headers["location"] == f"/admin/chains/{chain.id}"
    assert "已截单" in flash(http, r)
    h.pump()
    lists = [m for m in h.backend.app_messages if m["touser"] == "zhangsan" and m["msgtype"] == "text"
             and "【备货名单】" in m["text"]["content"]]
    assert len(lists) == 1 and "共 2 人、2 份" in lists[0]["text"]["content"]
    assert "已经截单了" in flash(http, post(http, f"/admin/chains/{chain.id}/close", csrf=csrf_of(detail)))
    h.pump()
    assert len([m for m in h.backend.app_messages if "【备货名单】" in (m.get("text") or {}).get("content", "")]) == 1
    with reads_of(h.c.sessions)() as s:
        assert s.get(Chain, chain.id).closed_reason == "early"
    assert "已提前截单" in http.get("/admin/chains").text
    assert [(a.action, a.target, a.detail["changed"]) for a in actions(h)] == [
        ("close_chain", str(chain.id), True), ("close_chain", str(chain.id), False)]


def test_markup_in_a_store_name_or_chain_title_stays_inert(db_url, clock):
    stores = [{"code": "XSS01", "name": "<script>alert(1)</script>店", "clerks": ["zhangsan"]}]
    with Harness(database_url=db_url, stores=stores, clock=clock, calendar_dir=ROOT / "content_calendar",
                 workers=False) as hh:
        assert not hh.sync().failed
        chain = open_chain(hh, title="<script>alert(2)</script>葡萄")
        assert "<script>" in chain.title
        at(hh, 10)
        run_slot(hh.c, "10:00", MONDAY)
        http = bearer()
        for path in ("/admin/broadcasts", "/admin/broadcasts?store=XSS01", "/admin/chains", f"/admin/chains/{chain.id}",
                     "/admin/stores/XSS01"):
            r = http.get(hh.bot.url + path)
            assert r.status_code == 200, path
            assert "<script>alert" not in r.text, path
        assert "&lt;script&gt;alert(1)" in http.get(hh.bot.url + "/admin/broadcasts?store=XSS01").text
        assert "&lt;script&gt;alert(2)" in http.get(hh.bot.url + f"/admin/chains/{chain.id}").text
        # the flash carries the title too, escaped
        r = http.post(f"{hh.bot.url}/admin/chains/{chain.id}/close", data={})
        page = http.get(hh.bot.url + r.headers["location"], cookies=r.cookies)
        assert "<script>alert" not in page.text and "已截单 #" in page.text
