from bot.scheduler import Scheduler, refresh_group_qr_media


def test_group_qr_media_is_uploaded_again_before_expiry(synced):
    h = synced
    uploads = h.backend.calls["media/upload"]
    assert refresh_group_qr_media(h.c) == 2
    assert h.backend.calls["media/upload"] == uploads          # still fresh: nothing to do
    h.clock.advance(days=2, hours=13)
    refresh_group_qr_media(h.c)
    assert h.backend.calls["media/upload"] == uploads + 2


def test_jobs_are_added_only_when_missing(harness):
    s = Scheduler(harness.c)
    s._add_jobs()
    s._add_jobs()
    assert sorted(j.id for j in s.aps.get_jobs()) == [
        "broadcast_follow_up", "close_due_chains", "qr_check", "refresh_group_qr_media", "reload_calendar",
        "slot:10:00", "slot:12:00", "slot:16:00", "slot:20:00"]
    slot = s.aps.get_job("slot:12:00")
    assert str(slot.trigger.timezone) == "Asia/Shanghai" and slot.misfire_grace_time == 600
    assert [str(f) for f in slot.trigger.fields if f.name in ("hour", "minute")] == ["12", "0"]
    defaults = s.aps._job_defaults
    assert defaults["coalesce"] and defaults["misfire_grace_time"] == 300
    assert str(s.aps.timezone) == "Asia/Shanghai"


def test_one_scheduler_is_elected_on_postgresql(harness):
    a, b = Scheduler(harness.c), Scheduler(harness.c)
    try:
        first, second = a._elected(), b._elected()
        if harness.c.engine.dialect.name == "postgresql":
            assert (first, second) == (True, False)
            a.stop()
            assert b._elected()
        else:
            assert first and second   # SQLite: one machine, one serve
    finally:
        a.stop()
        b.stop()
