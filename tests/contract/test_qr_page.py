"""The group-QR page (/q/{token}) a welcome links to, customers' reports, and bringing back the
customers a broken QR stranded (issue 14, items 1-3). Through encrypted callbacks and HTTP."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select

from bot.db.models import FunnelFact, QrFinding
from tests.contract.helpers import outbox


def welcomed(h, store: str = "SZ001") -> tuple[str, str]:
    """A customer adds the store's clerk and is welcomed: (external_userid, the page link)."""
    d = h.driver.member_adds_clerk(store)
    h.pump()
    sent = next(w for w in h.backend.welcomes if w["external_userid"] == d.fields["ExternalUserID"])
    (url,) = [a["link"]["url"] for a in sent["attachments"] if a["msgtype"] == "link"]
    return d.fields["ExternalUserID"], url


def outage(h, adds: int = 6, store: str = "SZ001") -> list[tuple[str, str]]:
    """The store's QR stops working; `adds` customers add its clerk and cannot join, and their adds
    ripen past qr_health.grace_minutes (the silence since the last join that reports need)."""
    h.backend.break_qr(store, "nobody")
    stranded = [welcomed(h, store) for _ in range(adds)]
    h.clock.advance(6 * 60)
    return stranded


def facts(h, kind_prefix: str) -> list[FunnelFact]:
    with h.c.sessions() as s:
        return list(s.scalars(select(FunnelFact).where(FunnelFact.kind.like(f"{kind_prefix}%"))))


def findings(h, kind: str) -> list[QrFinding]:
    with h.c.sessions() as s:
        return list(s.scalars(select(QrFinding).where(QrFinding.kind == kind)))


def texts_to(h, userid: str) -> list[str]:
    return [m["text"]["content"] for m in h.backend.app_messages if m["touser"] == userid and not m["dropped"] and m["msgtype"] == "text"]


def test_the_welcome_links_a_page_with_the_current_group_qr_and_the_view_is_a_funnel_step(synced):
    h = synced
    ext, url = welcomed(h)
    page = httpx.get(url)
    assert page.status_code == 200 and "深圳科技园店福利群" in page.text
    assert "长按上面的二维码" in page.text and "扫码进不了群？告诉店员" in page.text
    assert "<script" not in page.text                               # works without JavaScript
    png = httpx.get(url + "/qr.png")
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    before = h.backend.calls["externalcontact/groupchat/get_join_way"]
    assert httpx.get(url + "/qr.png").content == png.content          # a minute's cache: one WeCom read
    assert h.backend.calls["externalcontact/groupchat/get_join_way"] == before
    httpx.get(url)
    (viewed,) = facts(h, "viewed")                                    # once per add, however often opened
    assert (viewed.store_code, viewed.external_userid, viewed.userid) == ("SZ001", ext, "zhangsan")


def test_a_tampered_or_expired_page_link_is_refused_in_chinese(synced):
    h = synced
    _, url = welcomed(h)
    head, sig = url.rsplit("/", 1)[1].split(".", 1)
    bad = httpx.get(url[:-3] + ("AAA" if not url.endswith("AAA") else "BBB"))
    assert bad.status_code == 403 and "进群链接无效" in bad.text
    assert httpx.post(url[:-3] + "AAA/report", data={"reason": "error"}).status_code == 403
    h.clock.advance(31 * 86400)
    gone = httpx.get(url)
    assert gone.status_code == 410 and "已过期" in gone.text
    assert not facts(h, "viewed")


def test_a_report_answers_202_with_the_clerks_name_and_counts_once(synced):
    h = synced
    _, url = welcomed(h)
    form = httpx.post(url + "/report", data={"reason": "full"})
    assert form.status_code == 202 and "谢谢你告诉我们" in form.text and "小张" in form.text
    again = httpx.post(url + "/report", json={"reason": "error"})
    assert again.status_code == 202 and again.json()["clerk"] == "小张"
    (report,) = facts(h, "report:")
    assert report.kind == "report:full"                               # the first one counted
    assert httpx.post(url + "/report", content=b"[1]", headers={"content-type": "application/json"}).status_code == 422


def test_one_report_from_a_healthy_store_raises_no_alarm_but_the_clerk_can_help_that_customer(synced):
    h = synced
    ext, url = welcomed(h)
    httpx.post(url + "/report", data={"reason": "other"})
    httpx.post(url + "/report", data={"reason": "error"})             # the same customer again: nothing more
    h.pump()
    assert not findings(h, "reported")
    assert not [t for t in texts_to(h, "zhangsan") if "二维码异常" in t]
    (help_,) = [t for t in texts_to(h, "zhangsan") if "顾客进不了群" in t]   # to the clerk this customer added
    assert f"尾号{ext[-4:]}" in help_ and "其他原因" in help_ and "拉进群" in help_


def test_one_report_and_six_silent_adds_are_not_enough_nine_are(synced):
    h = synced
    stranded = outage(h, 6)
    httpx.post(stranded[0][1] + "/report", data={"reason": "error"})
    assert not findings(h, "reported")          # 0.4^6 ≈ 0.004: a healthy store shows that now and then
    more = [welcomed(h) for _ in range(3)]
    h.clock.advance(6 * 60)
    httpx.post(more[0][1] + "/report", data={"reason": "error"})
    (f,) = findings(h, "reported")              # 0.4^9 < qr_health.report_alpha
    assert f.open_key is not None


def test_two_reports_with_a_join_between_them_raise_no_alarm(synced):
    h = synced
    (_, url_a), *_ = [welcomed(h) for _ in range(6)]
    httpx.post(url_a + "/report", data={"reason": "error"})
    h.driver.member_joins_group("SZ001")         # somebody got in: the QR worked after that report
    h.clock.advance(5)
    h.pump()
    (_, url_b), *_ = [welcomed(h) for _ in range(6)]
    h.clock.advance(6 * 60)
    httpx.post(url_b + "/report", data={"reason": "error"})
    assert not findings(h, "reported")


def test_two_reports_wait_for_enough_silence(synced):
    h = synced
    stranded = outage(h, 2)
    for _, url in stranded:
        httpx.post(url + "/report", data={"reason": "error"})
    assert not findings(h, "reported")           # two adds: too little to tell from two stray reports
    assert len([t for t in texts_to(h, "zhangsan") if "顾客进不了群" in t]) == 0   # (not pumped yet)
    h.pump()
    assert len([t for t in texts_to(h, "zhangsan") if "顾客进不了群" in t]) == 2    # each reporter's clerk hears


def test_two_customers_reporting_alert_the_clerks_at_once(synced):
    h = synced
    (_, url_a), (_, url_b), *_ = outage(h, 6)
    httpx.post(url_a + "/report", data={"reason": "error"})
    assert not findings(h, "reported")
    httpx.post(url_b + "/report", json={"reason": "error"})
    (f,) = findings(h, "reported")
    assert f.evidence == {"reports": 2, "reasons": {"error": 2}} and f.resolved_at is None
    h.pump()                                                           # no pass needed: the alert goes now
    alert = [t for t in texts_to(h, "zhangsan") if "顾客反馈扫码进不了群" in t]
    assert alert and "2位刚加好友的顾客" in alert[0] and "系统错误" in alert[0]


def test_the_all_clear_brings_back_exactly_the_stranded_customers(synced):
    h = synced
    stranded = outage(h, 6)
    for _, url in stranded[3:5]:                  # the silent adds before the reporters were stranded too
        httpx.post(url + "/report", data={"reason": "error"})
    h.pump()
    (f,) = findings(h, "reported")
    h.backend.break_qr("SZ001", "fix")
    joiner = stranded[5][0]                       # one of them tries again and gets in: this join clears it
    h.driver.member_joins_group("SZ001", joiner)
    h.clock.advance(5)
    h.pump()
    (f,) = findings(h, "reported")
    assert f.resolved_at is not None
    (mass,) = [t for t in h.backend.templates.values() if t["chat_type"] == "single"]
    assert sorted(mass["targets"]) == sorted(ext for ext, _ in stranded[:5])   # not the one who joined
    assert mass["creator"] in ("zhangsan", "zhaoliu") and "修好了" in mass["text"]["content"]
    assert [a["msgtype"] for a in mass["attachments"]] == ["image"]             # the working group QR
    assert any("请确认群发" in t for t in texts_to(h, mass["creator"]))
    # never twice for one finding: a second pass over the cleared finding queues nothing
    h.c.check_qr()
    h.pump()
    assert len([t for t in h.backend.templates.values() if t["chat_type"] == "single"]) == 1
    assert len([r for r in outbox(h) if r.kind == "recovery_message"]) == 1


@pytest.mark.parametrize("fault", ["drop"])
def test_a_recovery_message_whose_answer_was_lost_is_not_made_twice(synced, fault):
    h = synced
    stranded = outage(h, 6)
    for _, url in stranded[:2]:
        httpx.post(url + "/report", data={"reason": "error"})
    h.backend.break_qr("SZ001", "fix")
    h.backend.inject_fault("externalcontact/add_msg_template", fault)
    h.driver.member_joins_group("SZ001")
    h.clock.advance(5)
    h.pump()
    h.clock.advance(600)
    h.pump()
    singles = [t for t in h.backend.templates.values() if t["chat_type"] == "single"]
    assert len(singles) == 1
    (row,) = [r for r in outbox(h) if r.kind == "recovery_message"]
    assert row.status == "done" and row.result.get("adopted")
    assert sorted(singles[0]["targets"]) == sorted(ext for ext, _ in stranded)
