"""Churn (`流失 churn`, the report) and the morning digest (`wecom-bot digest`, the 09:30 job), through
encrypted callbacks against the sandbox, on both databases."""

from datetime import date, timedelta

import pytest

from bot.cli import main
from bot.clock import SystemClock
from bot.config import load_settings
from bot.digest import send_digest
from bot.sandbox.backend import Corp, WeComBackend
from bot.sandbox.errors import SandboxError
from bot.sandbox.harness import Harness
from bot.sandbox.routes import create_sandbox_app
from bot.sandbox.seed import seed_stores
from bot.scheduler import Scheduler
from bot.serving import ServerThread
from tests.conftest import ROOT, STORES
from tests.contract.test_cli import config_for

STATS = "externalcontact/groupchat/statistic"


def messages_to(h, userid):
    return [m["text"]["content"] for m in h.backend.app_messages if m["touser"] == userid and not m["dropped"]]


def digests_to(h, userid):
    return [t for t in messages_to(h, userid) if t.startswith("【早报")]


@pytest.fixture
def ops_synced(db_url, clock):
    h = Harness(database_url=db_url, stores=STORES, clock=clock, calendar_dir=ROOT / "content_calendar",
                workers=False, settings_overrides={"ops_userids": ["ops_lead"]})
    h.start()
    h.backend.add_clerk("ops_lead")
    report = h.sync()
    assert not report.failed, report.summary()
    yield h
    h.stop()


def join(h, state, name):
    ext = h.driver.member_adds_clerk(state, name).fields["ExternalUserID"]
    h.pump()
    h.clock.advance(30)
    h.driver.member_joins_group(state, ext)
    h.pump()
    return ext


def chat_of(h, ext):
    return next(c for c, g in h.backend.groups.items() if any(m.userid == ext for m in g.members))


# -- churn -----------------------------------------------------------------------------------
def test_churn_command_shows_todays_and_the_weeks_leaves_with_masked_names(synced):
    h = synced
    wang = join(h, "SZ001", "王阿姨")
    li = join(h, "SZ001", "李大爷")
    h.driver.member_leaves(chat_of(h, wang), wang)            # Monday: 王 leaves the group
    h.pump()
    h.clock.advance(86400)                                    # Tuesday, the same week
    h.driver.member_leaves(chat_of(h, li), li)
    h.driver.member_deletes_clerk(li, "zhangsan")
    h.driver.member_adds_clerk("SZ002")                       # another store's: not zhangsan's churn
    h.pump()
    h.driver.clerk_says("zhangsan", "流失")
    h.driver.clerk_says("zhangsan", "churn")
    h.pump()
    reply, again = messages_to(h, "zhangsan")[-2:]
    assert reply.startswith("流失（今天11-24，本周自11-23周一起")
    assert "深圳科技园店：今天退群1、删店员1；本周退群2、删店员1" in reply
    today, earlier = reply.split("本周早些时候")
    assert "李** 退群" in today and "李** 删除了店员" in today and "扫门店店员码加的 zhangsan" in today
    assert "扫门店群码进的群" in today and "「" in today
    assert "王** 退群" in earlier and "王阿姨" not in reply and "李大爷" not in reply
    assert "深圳海岸城" not in reply
    assert again.startswith(reply.split("\n")[0][:10])        # the English alias answers the same


def test_churn_with_nobody_gone_says_so_and_help_lists_it(synced):
    h = synced
    h.driver.clerk_says("zhangsan", "churn")
    h.driver.clerk_says("zhangsan", "帮助")
    h.pump()
    reply, help_ = messages_to(h, "zhangsan")
    assert "今天退群0、删店员0；本周退群0、删店员0" in reply and "今天还没有顾客离开" in reply
    assert "流失 / churn" in help_


def test_the_report_carries_churn(synced, capsys):
    from bot.report import print_report
    h = synced
    ext = join(h, "SZ001", "王阿姨")
    h.driver.member_leaves(chat_of(h, ext), ext)
    h.pump()
    print_report(h.c.sessions, h.c.settings.tz, h.clock.now().date())
    out = capsys.readouterr().out
    assert "Churn 2026-11-23: 1 group leaves, 0 clerk deletions" in out and "王** 退群" in out


# -- the digest ------------------------------------------------------------------------------
def monday_activity(h):
    """Monday at SZ001: two adds, one joins and talks, one leaves the group; one add at SZ002."""
    stay = join(h, "SZ001", "王阿姨")
    h.backend.member_speaks(chat_of(h, stay), stay, 3)
    h.driver.member_adds_clerk("SZ001", "赵先生")
    h.driver.member_adds_clerk("SZ002", "钱女士")
    h.pump()
    gone = join(h, "SZ001", "孙小姐")
    h.driver.member_leaves(chat_of(h, gone), gone)
    h.pump()
    h.clock.advance(86400 + 1800)                             # Tuesday 09:30 and a bit


def test_each_clerk_gets_one_digest_of_yesterday_and_ops_the_chain_wide_one(ops_synced):
    h = ops_synced
    monday_activity(h)
    report = send_digest(h.c)
    h.pump()
    assert report.day == date(2026, 11, 23) and report.wecom_stats == "ok"
    assert sorted(report.queued) == ["lisi", "ops_lead", "wangwu", "zhangsan"]
    (mine,) = digests_to(h, "zhangsan")
    assert mine.startswith("【早报】11-23（周一）我的门店")
    assert "深圳科技园店：加好友3，打开进群页0，进群2（67%）；退群1，删店员0" in mine
    assert "二维码：正常" in mine and "群发：确认0个" in mine and "团购：0单0份 ¥0" in mine
    wecom = h.backend.groupchat_statistic({"day_begin_time": int(h.clock.timestamp() - 86400),
                                           "owner_filter": {"userid_list": ["zhangsan"]}})["items"][0]["data"]
    assert wecom["member_has_msg"] == 1 and wecom["msg_total"] == 3      # 王阿姨's three messages
    assert f"企微群统计（我的群）：新增成员{wecom['new_member_cnt']}，发言成员1，消息3" in mine
    assert "深圳海岸城店" not in mine
    (lisi,) = digests_to(h, "lisi")
    assert "深圳海岸城店：加好友1" in lisi and "发言成员0，消息0" in lisi
    (ops,) = digests_to(h, "ops_lead")
    assert ops.startswith("【早报·全部门店】11-23（周一），2家门店")
    assert "合计：加好友4，打开进群页0，进群2（50%）；退群1" in ops
    lowest = ops.split("进群率最低的")[1]
    assert lowest.index("SZ002") < lowest.index("SZ001")      # 0% before 67%
    assert "未解决的二维码问题：无" in ops and "企微群统计（全部群主）：新增成员" in ops and "消息3" in ops
    assert all(len(t.encode()) <= 2048 for t in (mine, lisi, ops))


def test_running_the_digest_twice_sends_nothing_new(ops_synced):
    h = ops_synced
    monday_activity(h)
    send_digest(h.c)
    h.pump()
    calls, sent = h.backend.calls[STATS], len(h.backend.app_messages)
    again = send_digest(h.c)
    h.pump()
    assert again.queued == [] and sorted(again.already) == ["lisi", "ops_lead", "wangwu", "zhangsan"]
    assert len(h.backend.app_messages) == sent and h.backend.calls[STATS] == calls   # not even the read
    assert len(digests_to(h, "zhangsan")) == 1


def test_the_digest_goes_without_wecoms_figures_when_they_fail(ops_synced):
    h = ops_synced
    monday_activity(h)
    h.backend.inject(STATS, 48002)
    report = send_digest(h.c)
    h.pump()
    assert report.wecom_stats == "failed (errcode 48002)"
    (mine,) = digests_to(h, "zhangsan")
    assert "加好友3" in mine and "企微群统计（我的群）：企微暂时没有返回，这次早报不含这部分" in mine
    assert "企微暂时没有返回" in digests_to(h, "ops_lead")[0]


def test_a_digest_of_today_does_not_ask_wecom(ops_synced):
    h = ops_synced
    report = send_digest(h.c, h.clock.now().date())
    h.pump()
    assert report.wecom_stats.startswith("skipped") and h.backend.calls[STATS] == 0
    assert "企微只提供到昨天的数据" in digests_to(h, "zhangsan")[0]


def test_the_digest_tells_clerks_about_open_findings(ops_synced):
    h = ops_synced
    h.backend.break_qr("SZ001", "deleted")
    h.backend.inject("externalcontact/groupchat/add_join_way", 48002, times=20)
    h.c.check_qr()
    h.pump()
    h.clock.advance(86400)
    send_digest(h.c)
    h.pump()
    mine = digests_to(h, "zhangsan")[0]
    assert "⚠️ 二维码：群二维码已失效" in mine
    assert "未解决的二维码问题：1个" in digests_to(h, "ops_lead")[0]


def test_the_scheduler_runs_the_digest_at_digest_time(harness):
    s = Scheduler(harness.c)
    s._add_jobs()
    job = s.aps.get_job("digest")
    assert str(job.trigger.timezone) == "Asia/Shanghai"
    assert [str(f) for f in job.trigger.fields if f.name in ("hour", "minute")] == ["9", "30"]


def test_a_scheduler_that_takes_over_after_digest_time_still_sends_this_mornings(harness):
    """A new cron job's next run is tomorrow's: a holder that takes over at 10:00 sends the 09:30
    digest then (send_digest is idempotent per day and recipient: what the old holder sent stays sent)."""
    harness.clock.advance(60 * 60)                        # Monday 09:00 → 10:00
    s = Scheduler(harness.c)
    s._add_jobs()
    today = harness.clock.now().astimezone(harness.c.settings.tz).date()
    assert s.aps.get_job(f"catch_up:{today}:digest") is not None
    harness.clock.advance(3 * 3600)                       # 13:00: past the three hours' grace
    late = Scheduler(harness.c)
    late._add_jobs()
    assert late.aps.get_job(f"catch_up:{harness.clock.now().astimezone(harness.c.settings.tz).date()}:digest") is None


# -- the sandbox's statistics ------------------------------------------------------------------
def test_sandbox_statistic_enforces_wecoms_bounds(synced):
    h = synced
    b = h.backend
    h.clock.advance(86400)                      # the groups were seeded yesterday
    owners = {"owner_filter": {"userid_list": ["zhangsan"]}}
    with pytest.raises(SandboxError):           # today: not served yet
        b.groupchat_statistic({"day_begin_time": int(b.now()), **owners})
    with pytest.raises(SandboxError):           # > 100 owners
        b.groupchat_statistic({"day_begin_time": int(b.now() - 86400),
                               "owner_filter": {"userid_list": [f"u{i}" for i in range(101)]}})
    with pytest.raises(SandboxError):           # > 30 days
        b.groupchat_statistic({"day_begin_time": int(b.now() - 40 * 86400), "day_end_time": int(b.now() - 86400),
                               **owners})
    res = b.groupchat_statistic({"day_begin_time": int(b.now() - 86400), **owners})
    assert [i["owner"] for i in res["items"]] == ["zhangsan"] and res["total"] == 1
    by_day = b.groupchat_statistic_group_by_day({"day_begin_time": int(b.now() - 3 * 86400),
                                                 "day_end_time": int(b.now() - 86400), **owners})
    assert len(by_day["items"]) == 3


# -- the command line --------------------------------------------------------------------------
def test_digest_through_the_cli_is_idempotent(tmp_path, db_url, capsys):
    extra = "admin_token: cli-test-admin-token\nops_userids: [ops_lead]\n"
    settings = load_settings(config_for(tmp_path, db_url), environ={})
    w = settings.wecom
    backend = WeComBackend(Corp(w.corp_id, w.secret.get_secret_value(), w.agent_id, w.token.get_secret_value(),
                                w.encoding_aes_key.get_secret_value()), SystemClock())
    sandbox = ServerThread(create_sandbox_app(backend)).start()
    backend.public_url = sandbox.url
    seed_stores(backend, settings.stores)
    backend.add_clerk("ops_lead")
    try:
        cfg = config_for(tmp_path, db_url, f"{sandbox.url}/cgi-bin/", extra=extra.replace("admin_token: cli-test-admin-token\n", ""))
        assert main(["--config", str(cfg), "sync"]) == 0
        day = (SystemClock(settings.tz).now().date() - timedelta(days=1)).isoformat()
        capsys.readouterr()
        assert main(["--config", str(cfg), "digest", "--date", day]) == 0
        assert f"digest {day}: 4 queued, 0 already sent earlier; WeCom group statistics: ok" in capsys.readouterr().out
        assert main(["--config", str(cfg), "digest", "--date", day]) == 0
        assert f"digest {day}: 0 queued, 4 already sent earlier" in capsys.readouterr().out
        texts = [m["text"]["content"] for m in backend.app_messages if m["touser"] == "zhangsan"]
        assert len([t for t in texts if t.startswith("【早报】")]) == 1
    finally:
        sandbox.stop()
