from datetime import datetime

import pytest

from bot.clock import SHANGHAI, FakeClock
from bot.wecom.pacer import NoRoom, Pacer


def test_at_most_the_limit_in_any_minute_then_it_waits_for_room():
    clock = FakeClock(datetime(2026, 11, 23, 10, tzinfo=SHANGHAI))
    pacer = Pacer(clock, per_minute=3)
    start = clock.timestamp()
    for _ in range(7):
        pacer.acquire("externalcontact/add_msg_template")
    # 3 at once, 3 a window (a minute and the 2 s a call may take to land) later, the 7th two windows
    # later: the least the limit allows
    assert clock.timestamp() - start == pytest.approx(124, abs=0.01)
    pacer.acquire("message/send")                      # app messages are not under the API limit
    assert clock.timestamp() - start == pytest.approx(124, abs=0.01)


def test_a_caller_holding_a_lease_is_told_when_room_opens_instead_of_waiting():
    clock = FakeClock(datetime(2026, 11, 23, 10, tzinfo=SHANGHAI))
    pacer = Pacer(clock, per_minute=1)
    pacer.acquire("a")
    with pytest.raises(NoRoom) as e:
        pacer.acquire("a", max_wait=5)
    assert e.value.wait == pytest.approx(62, abs=0.01)
    pacer.acquire("b", max_wait=5)                     # per API


def test_the_hourly_limit_holds_calls_to_the_end_of_the_clock_hour():
    clock = FakeClock(datetime(2026, 11, 23, 10, 58, 30, tzinfo=SHANGHAI))
    pacer = Pacer(clock, per_minute=3, per_hour=4)
    for _ in range(3):
        pacer.acquire("a")
    clock.advance(62)
    pacer.acquire("a", max_wait=0)                     # 10:59:32, the hour's 4th
    with pytest.raises(NoRoom) as e:                   # the minute has room, the hour has not
        pacer.acquire("a", max_wait=5)
    assert e.value.wait == pytest.approx(28, abs=0.01)
    clock.advance(28)
    pacer.acquire("a", max_wait=0)                     # 11:00, a new hour
