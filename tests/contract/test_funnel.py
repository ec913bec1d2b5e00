"""Funnel and QR health through encrypted callbacks against the sandbox."""

from datetime import timedelta

from sqlalchemy import select

from bot.db.engine import reads_of
from bot.db.models import FunnelFact, GroupChat, GroupMember, QrFinding
from bot.funnel.figures import funnel


def facts(h, kind=None):
    with reads_of(h.c.sessions)() as s:
        q = select(FunnelFact).order_by(FunnelFact.id)
        return [f for f in s.scalars(q) if kind is None or f.kind == kind]


def findings(h):
    with reads_of(h.c.sessions)() as s:
        return list(s.scalars(select(QrFinding).order_by(QrFinding.id)))


def messages_to(h, clerk):
    return [m["text"]["content"] for m in h.backend.app_messages if m["touser"] == clerk and not m["dropped"]]


def add_and_join(h, state, join=True):
    added = h.driver.member_adds_clerk(state)
    ext = added.fields["ExternalUserID"]
    h.pump()                                             # the welcome goes inside its 20 s
    if join:
        h.clock.advance(30)
        h.driver.member_joins_group(state, ext)
    return ext


def test_a_qr_join_is_attributed_to_the_store_with_its_delay(synced):
    h = synced
    ext = add_and_join(h, "SZ001")
    h.pump()
    (add,) = facts(h, "add")
    (join,) = facts(h, "join")
    assert (add.store_code, join.store_code, join.external_userid) == ("SZ001", "SZ001", ext)
    assert 29 <= join.join_delay_seconds <= 31
    with reads_of(h.c.sessions)() as s:
        member = s.get(GroupMember, (join.chat_id, ext))
        assert member.state == "SZ001" and member.join_scene == 3 and member.present
        today = h.clock.now().date()
        f = funnel(s, today, today, h.c.settings.tz)["SZ001"]
    assert (f.adds, f.converted, f.joins, f.conversion) == (1, 1, 1, 1.0)


def test_joins_without_state_are_counted_apart(synced):
    h = synced
    chat = h.groups["SZ001"][0]
    h.driver.member_invited(chat)
    h.pump()
    (other,) = facts(h, "join_other")
    assert other.store_code == "SZ001" and facts(h, "join") == []


def test_attribution_waits_out_groupchat_get_lag(synced):
    h = synced
    h.backend.rules.groupchat_get_lag = 5.0
    add_and_join(h, "SZ001")
    h.pump()
    assert facts(h, "join") == []                       # WeCom does not show the member yet
    assert h.backend.calls["externalcontact/groupchat/get"] >= 1
    for _ in range(4):
        h.clock.advance(2.1)
        h.pump()
    (join,) = facts(h, "join")
    assert join.store_code == "SZ001"


def test_leaves_and_clerk_deletions_are_counted(synced):
    h = synced
    ext = add_and_join(h, "SZ001")
    h.pump()
    (join,) = facts(h, "join")
    h.driver.member_leaves(join.chat_id, ext)
    h.driver.member_deletes_clerk(ext, "zhangsan")
    h.pump()
    assert [f.store_code for f in facts(h, "leave")] == ["SZ001"]
    assert [f.store_code for f in facts(h, "clerk_deleted")] == ["SZ001"]
    with reads_of(h.c.sessions)() as s:
        assert not s.get(GroupMember, (join.chat_id, ext)).present


def test_member_counts_follow_joins_and_the_200_cap_moves_joins_to_a_new_room(synced):
    h = synced
    chats = list([w for w in h.backend.join_ways.values() if w["state"] == "SZ001"][0]["chat_id_list"])
    for chat in chats:
        h.backend.fill_group(chat, 199)
    h.c.provisioner().sync(h.cfg.stores[:1])            # the bot reads the counts again
    add_and_join(h, "SZ001")                             # takes the last scan place of the first group
    add_and_join(h, "SZ001")
    add_and_join(h, "SZ001")                             # ... and the second's; then auto-create opens a room
    h.pump()
    with reads_of(h.c.sessions)() as s:
        counts = dict(s.execute(select(GroupChat.chat_id, GroupChat.member_count)).all())
    assert all(counts[c] == 200 for c in chats), (counts, chats)
    new_rooms = [c for c in counts if c not in h.groups["SZ001"] + h.groups["SZ002"]]
    assert len(new_rooms) == 1 and len(facts(h, "join")) == 3


def test_a_stalled_qr_alerts_each_clerk_once_and_clears_when_joins_resume(synced):
    h = synced
    h.backend.break_qr("SZ002", "nobody")
    for _ in range(16):                                  # one a minute; adds count after 5 min grace
        h.driver.member_adds_clerk("SZ002")
        h.clock.advance(60)
        h.pump()
    (f,) = findings(h)
    assert (f.store_code, f.kind, f.resolved_at) == ("SZ002", "stalled", None)
    assert f.evidence["adds"] == 8                       # (1-0.6)^8 < 0.01 with the default prior
    for clerk in ("lisi", "wangwu"):
        (alert,) = [m for m in messages_to(h, clerk) if "二维码异常" in m]
        assert "深圳海岸城店" in alert and "wecom-bot sync" in alert
    h.backend.break_qr("SZ002", "fix")
    add_and_join(h, "SZ002")
    h.pump()
    (f,) = findings(h)
    assert f.resolved_at is not None
    assert any("已恢复" in m for m in messages_to(h, "lisi"))


def test_a_burst_of_adds_before_its_joins_is_not_a_stall(synced):
    """Adds are handled before joins (priority, lag): the grace keeps a burst from looking stalled."""
    h = synced
    exts = [h.driver.member_adds_clerk("SZ001").fields["ExternalUserID"] for _ in range(12)]
    h.c.dispatcher("adds-first").run_once()
    for ext in exts:
        h.driver.member_joins_group("SZ001", ext)
    h.pump()
    h.clock.advance(600)
    h.c.check_qr()
    assert findings(h) == []


def test_ripe_adds_are_caught_by_the_scheduled_check(synced):
    h = synced
    h.backend.break_qr("SZ001", "nobody")
    for _ in range(9):
        h.driver.member_adds_clerk("SZ001")
    h.pump()
    assert findings(h) == []                             # nothing is older than the grace yet
    h.clock.advance(6 * 60)
    h.c.check_qr()                                # what the 5-minute job runs
    (f,) = findings(h)
    assert f.kind == "stalled" and f.evidence["adds"] == 9


def test_a_healthy_store_is_not_flagged(synced):
    h = synced
    for i in range(30):
        add_and_join(h, "SZ001", join=i % 3 != 0)        # two in three join, as usual
        h.clock.advance(60)
        h.pump()
    assert findings(h) == []


def test_a_full_join_way_is_repaired_and_said_so(synced):
    h = synced
    h.backend.break_qr("SZ001", "full")
    h.clock.advance(3700)                                # counts older than an hour are read again
    counts = h.c.check_qr()
    h.pump()
    assert counts["repaired"] == 1
    way = [w for w in h.backend.join_ways.values() if w["state"] == "SZ001"][0]
    assert way["auto_create_room"] == 1
    (msg,) = messages_to(h, "zhangsan")
    assert "群已满" in msg and "已自动修复" in msg
    assert [f.kind for f in findings(h)] == ["full"] and findings(h)[0].resolved_at is not None


def test_a_full_join_way_that_cannot_be_repaired_is_an_open_finding(synced):
    h = synced
    h.backend.break_qr("SZ001", "full")
    h.clock.advance(3700)
    h.backend.inject("externalcontact/groupchat/update_join_way", 48002, times=10)
    h.c.check_qr()
    h.c.check_qr()                                # a second pass: no second alert
    h.pump()
    (f,) = [f for f in findings(h) if f.resolved_at is None]
    assert f.kind == "full" and f.evidence["groups"] >= 1
    assert len(messages_to(h, "zhangsan")) == 1


def test_a_deleted_join_way_is_recreated(synced):
    h = synced
    h.backend.break_qr("SZ002", "deleted")
    h.c.check_qr()
    h.pump()
    assert "SZ002" in {w["state"] for w in h.backend.join_ways.values()}
    assert any("已自动修复" in m and "群二维码已失效" in m for m in messages_to(h, "lisi"))


def test_a_gone_qr_that_cannot_be_recreated_stays_open(synced):
    h = synced
    h.backend.break_qr("SZ002", "deleted")
    h.backend.inject("externalcontact/groupchat/add_join_way", 48002, times=10)
    h.c.check_qr()
    h.pump()
    (f,) = findings(h)
    assert f.kind == "gone" and f.resolved_at is None


def test_clerk_commands_stats_qr_help_and_unknown(synced):
    h = synced
    add_and_join(h, "SZ001")
    h.driver.member_adds_clerk("SZ001")
    h.pump()
    for text in ("数据", "stats", "二维码", "help", "乱七八糟"):
        h.driver.clerk_says("zhangsan", text)
    h.driver.clerk_says("stranger", "数据")
    h.pump()
    replies = messages_to(h, "zhangsan")
    assert "深圳科技园店：加好友2，打开进群页0，其中进群1（50%" in replies[0]
    assert replies[1].startswith(replies[0]) and replies[1] != replies[0]     # asked twice: answered twice
    assert "深圳科技园店：已配置，正常" in replies[2]
    assert "数据 / stats" in replies[3] and "二维码 / qr" in replies[3]
    assert replies[4].startswith("没看懂这条命令")
    h.backend.add_clerk("stranger")
    assert messages_to(h, "stranger") == [] or "不是任何门店的店员" in messages_to(h, "stranger")[0]


def test_report_command_prints_the_funnel(synced, capsys):
    from bot.report import print_report
    h = synced
    add_and_join(h, "SZ001")
    h.pump()
    print_report(h.c.sessions, h.c.settings.tz, h.clock.now().date())
    out = capsys.readouterr().out
    assert "SZ001" in out and "100%" in out and "QR findings: none open" in out


def test_stalled_uses_the_stores_history(synced):
    """A store that converts 90% is flagged sooner than the floor would allow a poor one."""
    h = synced
    for i in range(20):
        add_and_join(h, "SZ001", join=True)
    h.pump()
    h.clock.advance(timedelta(minutes=130).total_seconds())   # that history is now the baseline
    h.backend.break_qr("SZ001", "nobody")
    flagged_at = None
    for n in range(1, 20):
        h.driver.member_adds_clerk("SZ001")
        h.clock.advance(60)
        h.pump()
        if findings(h):
            flagged_at = n
            break
    assert flagged_at == 13                                     # 8 adds past the 5-minute grace
    assert findings(h)[0].evidence["adds"] == 8                 # min_adds bounds it from below
    assert findings(h)[0].evidence["p"] == 0.76                 # 20/20 shrunk toward the 0.6 prior (worth 30 adds)
