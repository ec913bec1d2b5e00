"""The receive-cap arithmetic: how many mass messages a group may still get today."""

from datetime import date

import pytest

from bot.broadcast import planner
from bot.calendar.calendar import Entry


def entry(slot, kind="story", delivery="auto", priority=30):
    return Entry(slot, kind, "x", None, (), delivery, priority, None, "default.yaml:1")


def test_daily_1_is_one_a_day_and_nothing_after_a_send():
    assert planner.allowance("daily_1", date(2026, 11, 30), 0) == 1
    assert planner.allowance("daily_1", date(2026, 11, 30), 1) == 0
    assert planner.allowance("daily_1", date(2026, 12, 1), 0) == 1        # a new day, a new allowance


def test_days_in_month_across_the_month_boundary():
    # Nov has 30 days: a group that received one each day so far has one left on the 30th …
    assert planner.allowance("days_in_month", date(2026, 11, 30), 29) == 1
    assert planner.allowance("days_in_month", date(2026, 11, 30), 30) == 0
    # … and December starts from its own 31.
    assert planner.period("days_in_month", date(2026, 12, 1)) == (date(2026, 12, 1), date(2026, 12, 31))
    assert planner.cap("days_in_month", date(2026, 12, 1)) == 31
    assert planner.allowance("days_in_month", date(2026, 12, 1), 0) == 1
    # February: 28 days. A group that has had nothing by the 20th may use the surplus (up to all slots).
    assert planner.cap("days_in_month", date(2027, 2, 20)) == 28
    assert planner.allowance("days_in_month", date(2027, 2, 20), 0) == 1 + (28 - 9)


def test_weekly_7_runs_monday_to_sunday_even_across_months():
    assert planner.period("weekly_7", date(2026, 12, 2)) == (date(2026, 11, 30), date(2026, 12, 6))
    assert planner.allowance("weekly_7", date(2026, 12, 2), 2) == 1      # on pace: one today
    assert planner.allowance("weekly_7", date(2026, 12, 2), 7) == 0
    assert planner.allowance("weekly_7", date(2026, 12, 6), 6) == 1      # Sunday, one left
    assert planner.allowance("weekly_7", date(2026, 12, 4), 0) == 1 + (7 - 3)   # nothing since Monday
    # A clerk who sent five by hand on Monday leaves our plan one a day for two of the six days left.
    assert planner.allowance("weekly_7", date(2026, 11, 30), 5) == 1
    assert planner.allowance("weekly_7", date(2026, 12, 1), 6) == 1
    assert planner.allowance("weekly_7", date(2026, 12, 2), 7) == 0


def test_the_marked_entry_wins_else_the_highest_priority_never_a_reminder_only_entry():
    day = [entry("10:00", "benefit", priority=60), entry("12:00", "flash_sale", priority=80),
           entry("16:00", "qa", priority=20), entry("20:00", "story", delivery="mass", priority=5)]
    assert planner.mass_slots(day, 1) == {"20:00"}
    assert planner.mass_slots(day, 2) == {"20:00", "12:00"}
    assert planner.mass_slots(day, 0) == set()
    assert planner.mass_slots([entry("10:00", delivery="reminder")], 1) == set()
    assert planner.mass_slots(day, 9) == {"10:00", "12:00", "16:00", "20:00"}


def test_unknown_rule_is_an_error():
    with pytest.raises(ValueError):
        planner.period("monthly_4", date(2026, 11, 1))
