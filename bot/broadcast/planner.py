"""Mass message or owner reminder, per day, slot and group, under the corp's receive cap.

WeCom lets each customer group receive a bounded number of mass messages (add_msg_template, and the
clerks' own mass sends, together): 1 a day, 7 a week, or as many as the month has days, as the
admin set it. Over the cap WeCom drops the message for that group (send_result status 3). So the
planner gives each group today's allowance: one a day, plus any surplus the period has (a month
that started without broadcasts), never more than is left; the slots that get it are the ones
marked `delivery: mass`, else the highest priority. Every other slot becomes a reminder to the
owner clerk, who sends it into the group with one tap from the sidebar.
"""

from __future__ import annotations

import calendar as cal
from collections.abc import Iterable
from datetime import date, timedelta

from bot.calendar.calendar import Entry

CAP_RULES = ("daily_1", "weekly_7", "days_in_month")


def period(rule: str, day: date) -> tuple[date, date]:
    """First and last day of the cap's period around `day`."""
    if rule == "daily_1":
        return day, day
    if rule == "weekly_7":  # WeCom's week: Monday to Sunday
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=6)
    if rule == "days_in_month":
        return day.replace(day=1), day.replace(day=cal.monthrange(day.year, day.month)[1])
    raise ValueError(f"unknown receive_cap {rule!r}")


def cap(rule: str, day: date) -> int:
    return {"daily_1": 1, "weekly_7": 7}.get(rule) or cal.monthrange(day.year, day.month)[1]


def allowance(rule: str, day: date, used: int) -> int:
    """Mass messages a group may still get today, given `used` in the period so far (received, or
    created by us and not yet confirmed): one, plus the surplus over one a day for the period's
    remaining days, never more than is left."""
    start, end = period(rule, day)
    remaining = cap(rule, day) - used
    days_left = (end - day).days + 1
    return max(0, min(remaining, 1 + max(0, remaining - days_left)))


def mass_slots(entries: Iterable[Entry], allowed: int) -> set[str]:
    """Which of the day's slots go as the mass message: marked first, then priority, then earlier."""
    candidates = sorted((e for e in entries if e.delivery != "reminder"), key=Entry.mass_rank)
    return {e.slot for e in candidates[:max(0, allowed)]}
