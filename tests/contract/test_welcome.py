"""Welcome with the group QR, driven by encrypted callbacks against the sandbox."""

from sqlalchemy import update

from bot.db.models import Event, Store
from tests.contract.helpers import count, welcomes


def only_welcome(h):
    (w,) = welcomes(h)
    return w


def test_welcome_is_sent_inside_the_window_with_the_group_qr(synced):
    h = synced
    d = h.driver.member_adds_clerk("SZ001")
    assert d.statuses == [200]
    h.pump()
    (sent,) = h.backend.welcomes
    assert sent["latency"] < 20
    assert "深圳科技园店" in sent["text"]
    assert "科技园店新客专享" in sent["text"]          # content_calendar/stores/SZ001.yaml override
    img, page = sent["attachments"]                 # the group QR, then the group-QR page of this add
    media = h.backend.media[img["image"]["media_id"]]
    assert media["type"] == "image" and media["filename"] == "SZ001-group-qr.png"
    assert page["msgtype"] == "link" and page["link"]["title"] == "点此进群（二维码打不开点这里）"
    assert page["link"]["url"].startswith(f"{h.bot.url}/q/")
    w = only_welcome(h)
    assert (w.status, w.qr_attached, w.store_code) == ("sent", True, "SZ001")
    assert w.latency_ms is not None and w.latency_ms < 20_000


def test_the_senders_are_woken_by_the_batchs_welcomes_before_its_other_work(synced):
    """The welcomes of a dispatcher's batch commit together, first, and ring the outbox's bell at once:
    they need not wait for the batch's join (not urgent) nor for their own adds' funnel work."""
    h = synced
    ext = h.driver.member_adds_clerk("SZ001").fields["ExternalUserID"]
    h.driver.member_adds_clerk("SZ002")
    h.driver.member_joins_group("SZ001", ext)
    rung: list[tuple[int, int]] = []
    d = h.c.dispatcher("test-dispatch")
    # at each ring: the welcome rows committed, and the events done
    d.on_urgent_done = lambda: rung.append((len(welcomes(h)), count(h, Event, status="done")))
    assert d.run_once() == 3
    assert rung == [(2, 0)]


def test_store_benefit_from_config_is_in_the_text(synced):
    synced.driver.member_adds_clerk("SZ002")
    synced.pump()
    assert "海岸城店：入群领10元券" in synced.backend.welcomes[0]["text"]


def test_qr_media_is_uploaded_once_and_reused(synced):
    h = synced
    uploads = h.backend.calls["media/upload"]        # sync uploaded each store's QR already
    for _ in range(5):
        h.driver.member_adds_clerk("SZ001")
    h.pump()
    assert len(h.backend.welcomes) == 5
    assert h.backend.calls["media/upload"] == uploads
    assert len({w["attachments"][0]["image"]["media_id"] for w in h.backend.welcomes}) == 1


def test_qr_media_is_refreshed_before_its_three_day_expiry(synced):
    h = synced
    uploads = h.backend.calls["media/upload"]
    h.clock.advance(days=2, hours=13)
    h.driver.member_adds_clerk("SZ001")
    h.pump()
    assert h.backend.calls["media/upload"] == uploads + 1
    assert only_welcome(h).status == "sent"


def test_41051_already_delivered_counts_as_done(synced):
    h = synced
    h.backend.inject("externalcontact/send_welcome_msg", 41051)
    h.driver.member_adds_clerk("SZ001")
    h.pump()
    w = only_welcome(h)
    assert w.status == "already" and h.backend.errors["externalcontact/send_welcome_msg:41051"] == 1


def test_41096_is_retried_inside_the_window(synced):
    h = synced
    h.backend.inject("externalcontact/send_welcome_msg", 41096, times=2)
    h.driver.member_adds_clerk("SZ001")
    for _ in range(5):
        h.pump()
        h.clock.advance(1.1)
    w = only_welcome(h)
    assert w.status == "sent" and len(h.backend.welcomes) == 1
    assert h.backend.errors["externalcontact/send_welcome_msg:41096"] == 2
    assert w.latency_ms < 20_000


def test_41050_is_recorded_as_expired_with_its_latency(synced):
    h = synced
    h.backend.inject("externalcontact/send_welcome_msg", 41050)
    h.driver.member_adds_clerk("SZ001")
    h.pump()
    w = only_welcome(h)
    assert w.status == "expired" and w.reason == "errcode 41050" and w.latency_ms is not None
    assert h.backend.welcomes == []


def test_a_missed_window_is_expired_without_calling_wecom(synced):
    h = synced
    h.driver.member_adds_clerk("SZ001")
    h.c.dispatcher("d").run_once()   # handled and queued, but the sender is late
    h.clock.advance(21)
    h.pump()
    w = only_welcome(h)
    assert w.status == "expired" and w.latency_ms >= 21_000
    assert h.backend.calls["externalcontact/send_welcome_msg"] == 0


def test_no_code_unknown_state_and_no_join_way_are_recorded_without_crash(synced):
    h = synced
    h.backend.add_clerk("zhangsan", admin_welcome=True)   # console welcome set: no WelcomeCode
    h.driver.member_adds_clerk("SZ001")
    h.backend.admin_welcome.clear()
    # a QR made elsewhere, with a state the bot does not know
    h.backend.add_contact_way({"type": 1, "scene": 2, "state": "FLYER", "user": ["zhangsan"]})
    h.driver.member_adds_clerk("FLYER")
    # a store whose join way is missing: the text still goes out, without the QR
    with h.c.sessions.begin() as s:
        s.execute(update(Store).where(Store.code == "SZ002").values(join_way_qr_code=None))
    h.driver.member_adds_clerk("SZ002")
    h.pump()
    by = {(w.state, w.status, w.reason) for w in welcomes(h)}
    assert ("SZ001", "skipped", "no_code") in by
    assert ("FLYER", "skipped", "unknown_state") in by
    assert ("SZ002", "sent", "no_join_way") in by
    # no QR image; the page link still goes (the page says the QR is not available and takes a report)
    assert len(h.backend.welcomes) == 1 and [a["msgtype"] for a in h.backend.welcomes[0]["attachments"]] == ["link"]


def test_redelivered_add_sends_one_welcome(synced):
    h = synced
    d = h.driver.member_adds_clerk("SZ001")
    for _ in range(3):
        h.driver.post(*d.request)
    h.pump()
    assert len(h.backend.welcomes) == 1 and len(welcomes(h)) == 1


def test_welcome_with_background_workers_under_a_burst(synced):
    h = synced
    h.c.start_workers()
    h.with_workers = True
    deliveries = h.driver.burst(["SZ001", "SZ002"] * 15)
    assert all(d.acked for d in deliveries)
    assert h.wait_for(lambda: len(h.backend.welcomes) == 30, timeout=20)
    assert max(w["latency"] for w in h.backend.welcomes) < 20


def test_a_missing_welcome_attachment_still_welcomes_inside_20s_with_text_and_qr(db_url, clock, tmp_path):
    """A typo in welcome.attachments once expired every welcome (the row retried past the window).
    Now the attachment that cannot be read is left out and recorded; every kind the schema takes goes."""
    import shutil

    from bot.sandbox.harness import Harness
    from tests.conftest import ROOT, STORES

    cal = tmp_path / "content_calendar"
    shutil.copytree(ROOT / "content_calendar", cal)
    shutil.copy(cal / "media" / "grapes.png", cal / "media" / "banner.png")
    (cal / "stores" / "SZ001.yaml").write_text(
        "welcome:\n  attachments:\n    - {image: media/banner.png}\n    - {file: media/grapes.png}\n"
        "    - {link: {title: 本周团购, url: 'https://example.com/c'}}\n", encoding="utf-8")
    h = Harness(database_url=db_url, stores=STORES, clock=clock, calendar_dir=cal, workers=False).start()
    try:
        assert not h.sync().failed
        assert h.c.content.last_error is None
        (cal / "media" / "banner.png").unlink()   # gone after the content was checked and loaded
        h.driver.member_adds_clerk("SZ001")
        h.pump()
        (sent,) = h.backend.welcomes
        assert sent["latency"] < 20
        kinds = [a["msgtype"] for a in sent["attachments"]]
        assert kinds == ["image", "link", "file", "link"]   # the group QR, its page, the file, the link; the lost one left out
        w = only_welcome(h)
        assert (w.status, w.qr_attached, w.reason) == ("sent", True, "attachment_left_out")
    finally:
        h.stop()


def test_check_reports_a_missing_welcome_attachment_as_file_line(tmp_path):
    import shutil

    from bot.welcome.content import WelcomeContent
    from tests.conftest import ROOT

    cal = tmp_path / "content_calendar"
    shutil.copytree(ROOT / "content_calendar", cal)
    (cal / "stores" / "SZ001.yaml").write_text("welcome:\n  attachments:\n    - {image: media/typo.png}\n",
                                               encoding="utf-8")
    (cal / "stores" / "SZ002.yaml").write_text("welcome:\n  benefit: 海岸城专享\n", encoding="utf-8")
    content = WelcomeContent(cal)
    (problem,) = content.file_problems
    assert "SZ001.yaml:3:" in problem and "media/typo.png" in problem
    # one store's typo costs no other store its welcome: the content still loaded
    assert content.last_error is None and content.spec_for("SZ002").benefit == "海岸城专享"
