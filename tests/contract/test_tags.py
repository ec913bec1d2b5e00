"""Store tags (issue 14 item 4) through encrypted callbacks against the sandbox: the store's corp tag
on every add through its QR, 已进群 once the customer joins its group, via mark_tag in the outbox."""

from sqlalchemy import select

from bot.db.engine import reads_of
from bot.db.models import CorpTag, Outbox, QrFinding
from bot.tags.marks import DELAY

STORE_GROUP, JOINED_GROUP, JOINED = "门店", "社群", "已进群"


def pump(h):
    """Welcomes first; tags wait out the welcome window (bot.tags.marks.DELAY), then go."""
    h.pump()
    h.clock.advance(DELAY.total_seconds() + 1)
    h.pump()


def mark_rows(h):
    with reads_of(h.c.sessions)() as s:
        return list(s.scalars(select(Outbox).where(Outbox.kind == "mark_tag").order_by(Outbox.id)))


def added(h, state):
    d = h.driver.member_adds_clerk(state)
    return d.fields["ExternalUserID"], d.fields["UserID"]


def test_an_add_gets_its_store_tag_when_added_through_the_store_qr(synced):
    h = synced
    ext, clerk = added(h, "SZ001")
    pump(h)
    assert h.backend.tags_of(ext, clerk) == ["深圳科技园店"]
    assert h.backend.state()["tags"]["groups"] == {STORE_GROUP: ["深圳科技园店"]}
    (row,) = mark_rows(h)
    assert row.status == "done" and row.payload["store_code"] == "SZ001"


def test_the_tag_group_is_created_once_for_many_adds_and_each_store_gets_one_tag(synced):
    h = synced
    customers = [added(h, "SZ001") for _ in range(3)] + [added(h, "SZ002") for _ in range(3)]
    pump(h)
    groups = [g for g in h.backend.tag_groups.values() if g["group_name"] == STORE_GROUP]
    assert len(groups) == 1
    assert sorted(t["name"] for t in groups[0]["tag"].values()) == ["深圳海岸城店", "深圳科技园店"]
    assert h.backend.calls["externalcontact/add_corp_tag"] == 2           # one per store, never per add
    assert h.backend.calls["externalcontact/mark_tag"] == 6
    for (ext, clerk), store in zip(customers, ["深圳科技园店"] * 3 + ["深圳海岸城店"] * 3):
        assert h.backend.tags_of(ext, clerk) == [store]
    lists = h.backend.calls["externalcontact/get_corp_tag_list"]
    ext, clerk = added(h, "SZ001")                                        # cached now: no read, no add
    pump(h)
    assert h.backend.calls["externalcontact/get_corp_tag_list"] == lists
    assert h.backend.calls["externalcontact/add_corp_tag"] == 2


def test_a_join_adds_the_joined_tag_on_the_relation_with_the_clerk(synced):
    h = synced
    ext, clerk = added(h, "SZ001")
    pump(h)
    h.clock.advance(30)
    h.driver.member_joins_group("SZ001", ext)
    pump(h)
    assert h.backend.tags_of(ext, clerk) == ["已进群", "深圳科技园店"]
    assert h.backend.state()["tags"]["groups"][JOINED_GROUP] == [JOINED]
    assert [r.status for r in mark_rows(h)] == ["done", "done"]


def test_a_tag_deleted_at_wecom_is_recreated_and_the_mark_retried(synced):
    h = synced
    first, clerk1 = added(h, "SZ001")
    pump(h)
    old_id = h.backend.admin_deletes_tag(STORE_GROUP, "深圳科技园店")     # an admin deletes it in the console
    assert h.backend.tags_of(first, clerk1) == []
    ext, clerk = added(h, "SZ001")
    pump(h)
    assert h.backend.errors["externalcontact/mark_tag:40068"] == 1        # the cached id answered 40068 once
    assert h.backend.tags_of(ext, clerk) == ["深圳科技园店"]
    row = mark_rows(h)[-1]
    assert row.status == "done" and row.result["tag_id"] != old_id
    with reads_of(h.c.sessions)() as s:
        assert s.get(CorpTag, (STORE_GROUP, "深圳科技园店")).tag_id == row.result["tag_id"]


def test_a_tag_made_in_the_admin_console_is_used_not_made_again(synced):
    h = synced
    ids = h.backend.admin_adds_tags(STORE_GROUP, ["深圳科技园店"])
    ext, clerk = added(h, "SZ001")
    pump(h)
    assert h.backend.calls["externalcontact/add_corp_tag"] == 0
    assert mark_rows(h)[0].result["tag_id"] == ids["深圳科技园店"]
    assert h.backend.tags_of(ext, clerk) == ["深圳科技园店"]


def test_marking_is_not_repeated_when_the_same_fact_arrives_again(synced):
    h = synced
    d = h.driver.member_adds_clerk("SZ001")
    pump(h)
    h.driver.post(*d.request)                        # WeCom redelivers the add byte for byte
    pump(h)
    h.clock.advance(30)
    h.driver.member_joins_group("SZ001", d.fields["ExternalUserID"])
    pump(h)
    chat = h.groups["SZ001"][0]
    h.driver.member_invited(chat)                    # another member's callback reads the group again
    pump(h)
    assert h.backend.calls["externalcontact/mark_tag"] == 2
    assert len(mark_rows(h)) == 2


def test_no_tag_without_a_store_qr_or_for_a_customer_who_left_the_clerk(synced):
    h = synced
    chat = h.groups["SZ001"][0]
    h.driver.member_invited(chat)                    # a join without any add: no relation to tag
    pump(h)
    assert mark_rows(h) == []
    d = h.driver.member_adds_clerk("SZ002")
    h.driver.member_deletes_clerk(d.fields["ExternalUserID"], d.fields["UserID"])   # before the bot tags them
    pump(h)
    (row,) = mark_rows(h)
    assert row.status == "done" and row.result == {"skipped": "no relation"}   # nothing to tag: not retried
    assert row.last_errcode == 84061


def test_tags_can_be_switched_off(harness):
    h = harness
    h.c.settings.tags.enabled = False
    h.sync()
    ext, clerk = added(h, "SZ001")
    pump(h)
    assert mark_rows(h) == [] and h.backend.tags_of(ext, clerk) == []


def test_a_join_whose_callback_was_lost_is_tagged_and_clears_a_finding_when_the_qr_pass_finds_it(synced):
    h = synced
    ext, clerk = added(h, "SZ001")
    pump(h)
    now = h.clock.now()
    with h.c.sessions.begin() as s:   # the store looked stalled
        h.c.qr_health.open(s, "SZ001", "stalled", now, {"adds": 8, "p": 0.6, "chance": 0.0007,
                                                       "window_minutes": 120}, seen_at=now)
    h.backend.member_scans_join_way("SZ001", ext)       # the customer joins; WeCom's callback never arrives
    h.clock.advance(2 * 3600)                           # member counts an hour old: the pass reads the groups
    h.c.check_qr(["SZ001"])
    pump(h)
    assert h.backend.tags_of(ext, clerk) == ["已进群", "深圳科技园店"]
    with reads_of(h.c.sessions)() as s:
        (f,) = s.scalars(select(QrFinding).where(QrFinding.store_code == "SZ001"))
    assert f.resolved_at is not None and f.open_key is None
    assert any("【已恢复】" in m["text"]["content"] for m in h.backend.app_messages
               if m["msgtype"] == "text" and m["touser"] == clerk)


def test_a_renamed_store_renames_its_tag_so_its_customers_keep_one_store_tag(synced):
    h = synced
    ext, clerk = added(h, "SZ001")
    pump(h)
    waiting, waiting_clerk = added(h, "SZ001")                          # its mark still queued, with the old name
    h.pump()
    (cfg,) = [st for st in h.cfg.stores if st.code == "SZ001"]
    h.c.provisioner().sync([cfg.model_copy(update={"name": "深圳科技园旗舰店"})])
    pump(h)
    assert h.backend.tags_of(ext, clerk) == ["深圳科技园旗舰店"]          # the same tag, renamed at WeCom
    assert h.backend.tags_of(waiting, waiting_clerk) == ["深圳科技园旗舰店"]   # not the old name made again
    made = h.backend.calls["externalcontact/add_corp_tag"]
    ext2, clerk2 = added(h, "SZ001")
    pump(h)
    assert h.backend.tags_of(ext2, clerk2) == ["深圳科技园旗舰店"]
    assert h.backend.calls["externalcontact/add_corp_tag"] == made       # no second tag for the store
    assert h.backend.calls["externalcontact/edit_corp_tag"] == 1


def test_a_store_tag_made_in_the_admin_console_is_not_renamed(synced):
    h = synced
    h.backend.admin_adds_tags(STORE_GROUP, ["深圳科技园店"])
    ext, clerk = added(h, "SZ001")
    pump(h)
    (cfg,) = [st for st in h.cfg.stores if st.code == "SZ001"]
    h.c.provisioner().sync([cfg.model_copy(update={"name": "深圳科技园旗舰店"})])
    pump(h)
    assert h.backend.calls["externalcontact/edit_corp_tag"] == 0         # not the bot's to edit
    with reads_of(h.c.sessions)() as s:
        (rename,) = s.scalars(select(Outbox).where(Outbox.kind == "rename_corp_tag"))
    assert rename.status == "done" and rename.result["renamed"] is False


def test_a_join_found_late_that_is_older_than_the_silence_does_not_clear_it(synced):
    h = synced
    ext, _ = added(h, "SZ001")
    pump(h)
    h.backend.member_scans_join_way("SZ001", ext)       # joined at 09:00; WeCom's callback never arrives
    h.clock.advance(3600)
    now = h.clock.now()
    with h.c.sessions.begin() as s:                     # the QR broke after that join
        h.c.qr_health.open(s, "SZ001", "stalled", now, {"adds": 8, "p": 0.6, "chance": 0.0007,
                                                       "window_minutes": 120}, seen_at=now)
    h.clock.advance(2 * 3600)
    h.c.check_qr(["SZ001"])                             # finds the 09:00 join now
    pump(h)
    with reads_of(h.c.sessions)() as s:
        (f,) = s.scalars(select(QrFinding).where(QrFinding.store_code == "SZ001"))
    assert f.open_key is not None and f.resolved_at is None
