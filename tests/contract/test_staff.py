"""Staff turnover (issue 13, items 1, 2, 6): clerks who leave WeCom or move between stores, driven
through encrypted change_contact callbacks and `sync` against the sandbox, on both databases."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from bot.cli import main
from bot.db.models import GroupChat, Outbox, QrFinding, Store
from bot.sandbox.harness import Harness
from tests.conftest import ROOT, STORES

OPS = "ops_lead"


@pytest.fixture
def staff(db_url, clock):
    """Synced bot + sandbox with an ops member; SZ002 has lisi and wangwu, SZ001 only zhangsan."""
    h = Harness(database_url=db_url, stores=STORES, clock=clock, calendar_dir=ROOT / "content_calendar",
                workers=False, settings_overrides={"ops_userids": [OPS]})
    h.start()
    h.backend.add_clerk(OPS)
    report = h.sync()
    assert not report.failed, report.summary()
    yield h
    h.stop()


def contact_way(h, state):
    return next(w for w in h.backend.contact_ways.values() if w["state"] == state)


def ops_texts(h):
    return [m["text"]["content"] for m in h.backend.app_messages if m["touser"] == OPS and not m["dropped"]]


def adds(h, state, n):
    ds = [h.driver.member_adds_clerk(state) for _ in range(n)]
    h.pump()
    return ds


def customers_of(ds, userid):
    return sorted(d.fields["ExternalUserID"] for d in ds if d.fields["UserID"] == userid)


def transfers(h, handover):
    return {t.external_userid: t for t in h.backend.transfers if t.handover == handover}


def test_clerk_deleted_leaves_the_qr_and_customers_and_groups_go_to_the_successor(staff):
    h = staff
    ds = adds(h, "SZ002", 6)
    mine = customers_of(ds, "lisi")
    groups = sorted(c for c, g in h.backend.groups.items() if g.owner == "lisi")
    assert mine and groups

    assert h.driver.clerk_leaves("lisi").acked
    h.pump()
    assert contact_way(h, "SZ002")["user"] == ["wangwu"]           # the counter QR keeps working
    d = h.driver.member_adds_clerk("SZ002")
    assert d.fields["UserID"] == "wangwu"
    h.pump()
    assert all(h.backend.groups[c].owner == "wangwu" for c in groups)
    with h.c.sessions() as s:
        assert {g.owner for g in s.scalars(select(GroupChat).where(GroupChat.chat_id.in_(groups)))} == {"wangwu"}
        assert s.get(Store, "SZ002").clerks == ["wangwu"]
    moved = transfers(h, "lisi")
    assert sorted(moved) == mine and {t.takeover for t in moved.values()} == {"wangwu"}
    assert {t.status for t in moved.values()} == {2}                # the 24-hour takeover started

    h.clock.advance(hours=25)
    h.pump()
    assert {t.status for t in transfers(h, "lisi").values()} == {1}
    assert set(mine) <= set(h.backend.customers_of("wangwu"))
    with h.c.sessions() as s:
        looks = list(s.scalars(select(Outbox).where(Outbox.kind == "resigned_transfer_result",
                                                    Outbox.status == "done")))
    assert looks and looks[-1].result["final"] and set(looks[-1].result["statuses"].values()) == {1}
    assert ops_texts(h) == []                                          # nothing for ops to fix
    assert h.backend.calls["externalcontact/resigned/transfer_customer"] == 1


def test_named_successor_takes_over_rather_than_the_clerk_with_fewest_customers(db_url, clock):
    stores = [{"code": "SZ009", "name": "深圳南山店", "clerks": ["a1", "b2", "c3"], "successor": "c3"}]
    h = Harness(database_url=db_url, stores=stores, clock=clock, calendar_dir=ROOT / "content_calendar",
                workers=False)
    with h:
        assert not h.sync().failed
        ds = adds(h, "SZ009", 9)   # each clerk gets 3; b2 gets fewer below
        assert customers_of(ds, "a1")
        h.driver.clerk_leaves("a1")
        h.pump()
        assert {t.takeover for t in transfers(h, "a1").values()} == {"c3"}


def test_customer_refusal_and_successor_over_its_limit_are_reported_to_ops_once(staff):
    h = staff
    ds = adds(h, "SZ002", 8)
    mine = customers_of(ds, "lisi")
    assert len(mine) >= 3
    # one customer refuses; of the others, room for all but one
    h.backend.rules.customer_limit = len(h.backend.customers_of("wangwu")) + len(mine) - 2
    h.driver.clerk_leaves("lisi")
    h.pump()
    assert h.driver.customer_refuses_transfer(mine[0]).acked
    h.clock.advance(hours=2)
    h.pump()
    h.clock.advance(minutes=2)
    h.pump()
    refused = [t for t in ops_texts(h) if "拒绝" in t]
    assert len(refused) == 1 and mine[0] in refused[0]
    h.clock.advance(hours=30)
    h.pump()
    h.clock.advance(minutes=2)
    h.pump()
    statuses = {t.external_userid: t.status for t in transfers(h, "lisi").values()}
    assert statuses[mine[0]] == 3 and list(statuses.values()).count(4) == 1
    texts = ops_texts(h)
    assert sum("拒绝" in t for t in texts) == 1                       # told once, not on every look
    assert any("客户数已达企业微信上限" in t for t in texts)


def test_last_clerk_leaving_opens_no_clerk_and_tells_ops_once(staff):
    h = staff
    adds(h, "SZ001", 2)
    h.driver.clerk_leaves("zhangsan")
    h.pump()
    with h.c.sessions() as s:
        (f,) = s.scalars(select(QrFinding).where(QrFinding.store_code == "SZ001", QrFinding.open_key.is_not(None)))
        assert f.kind == "no_clerk"
    h.clock.advance(minutes=2)
    h.pump()
    report = h.sync()                       # sync sees the same departure again: no second alert
    assert [r.error for r in report.results if r.code == "SZ001"]
    assert report.staff.gone == ["zhangsan"]
    h.clock.advance(minutes=2)
    h.pump()
    texts = ops_texts(h)
    assert sum("门店无店员" in t for t in texts) == 1 and "SZ001" in texts[0]
    assert h.backend.calls.get("externalcontact/resigned/transfer_customer", 0) == 0   # waits for a clerk

    # a clerk is back: the finding clears, and the waiting handover goes to them
    h.backend.add_clerk("zhaoliu")
    h.cfg.stores[0] = h.cfg.stores[0].model_copy(update={"clerks": ["zhangsan", "zhaoliu"]})
    h.sync()
    h.clock.advance(hours=1, minutes=1)
    h.pump()
    with h.c.sessions() as s:
        assert not list(s.scalars(select(QrFinding).where(QrFinding.store_code == "SZ001",
                                                          QrFinding.open_key.is_not(None))))
    assert {t.takeover for t in transfers(h, "zhangsan").values()} == {"zhaoliu"}
    assert any("又有店员了" in t for t in ops_texts(h))


def test_sync_finds_a_clerk_gone_without_a_callback(staff):
    h = staff
    adds(h, "SZ002", 4)
    h.backend.delete_user("wangwu", keep_record=True)     # user/get answers status 5, no callback delivered
    report = h.sync()
    assert report.staff.gone == ["wangwu"]
    h.pump()
    assert contact_way(h, "SZ002")["user"] == ["lisi"]
    assert all(g.owner != "wangwu" for g in h.backend.groups.values())


def test_restart_in_the_middle_of_a_handover_transfers_nothing_twice(staff):
    h = staff
    ds = adds(h, "SZ002", 6)
    mine = customers_of(ds, "lisi")
    groups = sorted(c for c, g in h.backend.groups.items() if g.owner == "lisi")
    h.backend.inject_fault("externalcontact/resigned/transfer_customer", "drop")
    h.backend.inject_fault("externalcontact/groupchat/transfer", "drop")
    h.driver.clerk_leaves("lisi")
    h.pump()                       # both calls done at WeCom, both answers lost
    with h.c.sessions() as s:
        rows = {r.kind: r for r in s.scalars(select(Outbox).where(
            Outbox.kind.in_(("resigned_transfer_customer", "groupchat_transfer"))))}
    assert {r.status for r in rows.values()} == {"unknown"}
    h.restart_bot()
    h.clock.advance(minutes=10)
    h.pump()
    assert h.backend.calls["externalcontact/resigned/transfer_customer"] == 1
    assert h.backend.calls["externalcontact/groupchat/transfer"] == 1
    assert sorted(transfers(h, "lisi")) == mine
    assert all(h.backend.groups[c].owner == "wangwu" for c in groups)
    with h.c.sessions() as s:
        assert {g.owner for g in s.scalars(select(GroupChat).where(GroupChat.chat_id.in_(groups)))} == {"wangwu"}
    h.clock.advance(hours=25)
    h.pump()
    assert {t.status for t in transfers(h, "lisi").values()} == {1}


def catch_up(h):
    """The CLI runs on the system clock; rows it queued are due by that clock."""
    ahead = time.time() - h.clock.timestamp()
    if ahead > 0:
        h.clock.advance(seconds=ahead + 1)


def write_config(h, tmp_path):
    corp = h.corp
    stores = "\n".join(f"  - {{code: {st.code}, name: {st.name}, clerks: [{', '.join(st.clerks)}]}}"
                       for st in h.cfg.stores)
    p = tmp_path / "config.yaml"
    p.write_text(f"""
database_url: "{h.database_url}"
admin_token: cli-handover-token-0123456789
calendar_dir: {ROOT / 'content_calendar'}
ops_userids: [{OPS}]
wecom:
  corp_id: {corp.corp_id}
  agent_id: {corp.agent_id}
  secret: {corp.secret}
  token: {corp.token}
  encoding_aes_key: {corp.encoding_aes_key}
  api_base_url: {h.sandbox.url}/cgi-bin/
stores:
{stores}
""", encoding="utf-8")
    return p


def test_handover_cli_prints_the_plan_and_apply_performs_it(staff, tmp_path, capsys):
    h = staff
    ds = adds(h, "SZ002", 6)
    mine = customers_of(ds, "lisi")
    groups = sorted(c for c, g in h.backend.groups.items() if g.owner == "lisi")
    # customers joined lisi's groups through the store's group QR: they are SZ002's groups
    way = next(w for w in h.backend.join_ways.values() if w["state"] == "SZ002")
    for chat_id in groups:
        way["chat_id_list"] = [chat_id]
        h.driver.member_joins_group("SZ002")
    h.pump()
    # lisi moves to SZ001: off SZ002's clerks, still employed
    h.cfg.stores[0] = h.cfg.stores[0].model_copy(update={"clerks": ["zhangsan", "lisi"]})
    h.cfg.stores[1] = h.cfg.stores[1].model_copy(update={"clerks": ["wangwu"]})
    report = h.sync()
    assert any("lisi @ SZ002" in p for p in report.staff.pending)
    cfg = write_config(h, tmp_path)

    assert main(["--config", str(cfg), "handover", "lisi", "--store", "SZ002"]) == 0
    out = capsys.readouterr().out
    assert "wangwu" in out and f"客户 {len(mine)} 位" in out and f"客户群 {len(groups)} 个" in out
    assert h.backend.calls.get("externalcontact/transfer_customer", 0) == 0      # a plan only

    assert main(["--config", str(cfg), "handover", "lisi", "--store", "SZ002", "--apply"]) == 0
    assert "已提交" in capsys.readouterr().out
    onjob = {t.external_userid: t for t in h.backend.transfers if t.mode == "onjob"}
    assert sorted(onjob) == mine and {t.takeover for t in onjob.values()} == {"wangwu"}
    assert all(h.backend.groups[c].owner == "wangwu" for c in groups)
    # a second --apply plans nothing again
    assert main(["--config", str(cfg), "handover", "lisi", "--store", "SZ002", "--apply"]) == 0
    assert h.backend.calls["externalcontact/transfer_customer"] == 1
    catch_up(h)   # the CLI ran on the system clock: the harness's fake one catches up
    h.clock.advance(hours=25)
    h.pump()
    assert {t.status for t in h.backend.transfers if t.mode == "onjob"} == {1}
    with h.c.sessions() as s:
        looks = list(s.scalars(select(Outbox).where(Outbox.kind == "transfer_result", Outbox.status == "done")))
    assert looks and looks[-1].result["final"]


def test_third_onjob_transfer_within_90_days_is_refused_by_wecom_and_reported(staff, tmp_path, capsys):
    h = staff
    ds = adds(h, "SZ002", 4)
    ext = customers_of(ds, "lisi")[0]
    # the customer moved twice already this quarter (lisi → wangwu → lisi, by other tools)
    for a, b in (("lisi", "wangwu"), ("wangwu", "lisi")):
        res = h.backend.onjob_transfer_customer({"handover_userid": a, "takeover_userid": b, "external_userid": [ext]})
        assert res["customer"][0]["errcode"] == 0
        h.clock.advance(hours=25)
        h.backend.customers_of(b)
    h.cfg.stores[1] = h.cfg.stores[1].model_copy(update={"clerks": ["wangwu"]})
    h.cfg.stores[0] = h.cfg.stores[0].model_copy(update={"clerks": ["zhangsan", "lisi"]})
    h.sync()
    cfg = write_config(h, tmp_path)
    assert main(["--config", str(cfg), "handover", "lisi", "--store", "SZ002", "--apply"]) == 0
    capsys.readouterr()
    with h.c.sessions() as s:
        (row,) = s.scalars(select(Outbox).where(Outbox.kind == "transfer_customer"))
        assert {c["external_userid"]: c["errcode"] for c in row.result["customer"]}[ext] == 40128
    catch_up(h)
    h.clock.advance(minutes=2)
    h.pump()
    assert any("40128" in t and ext in t for t in ops_texts(h))


def test_ops_lines_of_one_run_are_one_message(staff):
    from bot.staff.ops import tell_ops

    h = staff
    with h.c.sessions.begin() as s:
        assert tell_ops(s, h.clock, [OPS], ["第一件事"], "run:1")
        assert tell_ops(s, h.clock, [OPS], ["第二件事", "第一件事"], "run:1")
        assert not tell_ops(s, h.clock, [], ["没人收"], "run:1")
    h.pump()
    (text,) = ops_texts(h)
    assert "第一件事" in text and "第二件事" in text and text.count("第一件事") == 1
    with h.c.sessions.begin() as s:   # the first went out: a later line of the run is a new message
        tell_ops(s, h.clock, [OPS], ["第三件事"], "run:1")
    h.pump()
    assert len(ops_texts(h)) == 2


def test_a_group_two_stores_of_one_handover_could_claim_is_in_one_plan_only(staff):
    """A clerk serving two stores: a group recorded for one but behind the other's join way (or joined
    from it) goes to the store it is recorded under, not to both."""
    from bot.staff import handover as ho
    h = staff
    lisi = sorted(c for c, g in h.backend.groups.items() if g.owner == "lisi")
    both = ["SZ001", "SZ002"]
    with h.c.sessions.begin() as s:
        assert {s.get(GroupChat, c).store_code for c in lisi} == {"SZ002"}
        st = s.get(Store, "SZ001")
        st.join_way_chat_ids = [*(st.join_way_chat_ids or []), lisi[0]]
    with h.c.sessions() as s:
        in_sz1, in_sz2 = ho.groups_of(s, "lisi", "SZ001", both), ho.groups_of(s, "lisi", "SZ002", both)
        alone = ho.groups_of(s, "lisi", "SZ001")
    assert lisi[0] not in in_sz1 and in_sz2 == lisi
    assert not set(in_sz1) & set(in_sz2)
    assert alone == [lisi[0]]          # handed over from SZ001 alone, the group behind its QR goes with it
