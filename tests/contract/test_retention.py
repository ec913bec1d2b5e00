"""Retention: old events, settled outbox rows and slot deliveries go, and members' names and phone
tails of chains closed long ago; what reports count stays (reliability issue, item 9)."""

import re
import secrets
from datetime import date, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select

from bot import retention
from bot.clock import SHANGHAI
from bot.db.engine import reads_of
from bot.db.models import Chain, ChainBuyer, ChainOrder, Event, Outbox, SlotDelivery
from bot.funnel.figures import funnel
from bot.report import print_report
from bot.scheduler import purge_old_rows, run_slot

MONDAY = date(2026, 11, 23)
OPEN = "开团 阳光玫瑰葡萄 39.9元 10份 每人限2 截止周六18:00"


def at(h, day: date, hh: int, mm: int = 0) -> None:
    target = datetime(day.year, day.month, day.day, hh, mm, tzinfo=SHANGHAI).timestamp()
    h.clock.advance(max(0.0, target - h.clock.timestamp()))


def add_and_join(h, state: str) -> None:
    ext = h.driver.member_adds_clerk(state).fields["ExternalUserID"]
    h.pump()
    h.clock.advance(30)
    h.driver.member_joins_group(state, ext)
    h.pump()


def open_chain(h) -> str:
    h.driver.clerk_says("zhangsan", OPEN)
    h.pump()
    texts = [m.get("text", {}).get("content", "") for m in h.backend.app_messages if m["touser"] == "zhangsan"]
    return re.search(r"/c/([\w-]+)", [t for t in texts if "/c/" in t][-1]).group(1)


def order(h, token: str, name: str, tail: str, qty: int = 1) -> None:
    res = httpx.post(f"{h.bot.url}/c/{token}/orders", timeout=10,
                     json={"name": name, "phone_tail": tail, "qty": qty, "request_id": secrets.token_hex(8)})
    assert res.status_code == 201, res.text


def close_chain(h, token: str) -> None:
    h.driver.clerk_says("zhangsan", f"截单 {chain(h, token).id}")
    h.pump()
    assert chain(h, token).status == "closed"


def chain(h, token: str) -> Chain:
    with reads_of(h.c.sessions)() as s:
        return s.scalar(select(Chain).where(Chain.token == token))


def orders_of(h, token: str) -> list[tuple[str, str, str, int]]:
    with reads_of(h.c.sessions)() as s:
        return [(o.name, o.phone_tail, o.buyer_key, o.qty) for o in s.scalars(
            select(ChainOrder).join(Chain, Chain.id == ChainOrder.chain_id).where(Chain.token == token)
            .order_by(ChainOrder.id))]


def buyers_of(h, token: str) -> int:
    with reads_of(h.c.sessions)() as s:
        return len(list(s.scalars(select(ChainBuyer).where(ChainBuyer.chain_id == chain(h, token).id))))


def ids(h, model, *where) -> set[int]:
    with reads_of(h.c.sessions)() as s:
        return set(s.scalars(select(model.id).where(*where)))


def report(h, day: date) -> list[str]:
    lines: list[str] = []
    print_report(h.c.sessions, h.c.settings.tz, day, out=lines.append)
    return lines


def without_slots(lines: list[str]) -> list[str]:
    """The per-slot delivery block is made of slot_delivery rows, which retention purges."""
    start = next(i for i, line in enumerate(lines) if line.startswith("Broadcasts"))
    end = next(i for i, line in enumerate(lines) if line.startswith("Group-buy chains"))
    return lines[:start] + lines[end:]


def stuck_rows(h, at_: datetime) -> tuple[int, int, int, int]:
    """Rows that are old but not settled: a pending and a running event, a pending, a running and an
    unknown (outcome being reconciled) outbox row."""
    with h.c.sessions.begin() as s:
        made = [Event(delivery_key=f"stuck:{status}", kind="test", payload="<xml/>", received_at=at_,
                      status=status, next_attempt_at=at_ + timedelta(days=365)) for status in ("pending", "running")]
        made += [Outbox(key=f"stuck:{status}", kind="app_message", payload={}, status=status, created_at=at_,
                        next_attempt_at=at_ + timedelta(days=365)) for status in ("pending", "running", "unknown")]
        s.add_all(made)
        s.flush()
        return tuple(r.id for r in made)


@pytest.mark.parametrize("batch", [retention.BATCH, 3])
def test_old_rows_go_recent_and_unsettled_ones_stay_and_reports_keep_their_figures(synced, monkeypatch, batch):
    h = synced
    monkeypatch.setattr(retention, "BATCH", batch)   # 3: every step takes several batches
    # Day 0: adds and joins, a slot, a chain closed, a chain left open, rows stuck unsettled.
    for state in ("SZ001", "SZ001", "SZ002"):
        add_and_join(h, state)
    at(h, MONDAY, 10)
    run_slot(h.c, "10:00", MONDAY)
    h.clock.advance(60)
    h.pump()
    old_closed, old_open = open_chain(h), open_chain(h)
    order(h, old_closed, "王阿姨", "1234", qty=2)
    order(h, old_closed, "李叔", "5678")
    order(h, old_open, "赵姐", "4321")
    close_chain(h, old_closed)
    stuck = stuck_rows(h, h.clock.now())
    before = report(h, MONDAY)
    with reads_of(h.c.sessions)() as s:
        funnel_before = funnel(s, MONDAY, MONDAY, h.c.settings.tz)
    old_events = ids(h, Event, Event.status == "done")
    old_outbox = ids(h, Outbox, Outbox.status.in_(("done", "expired", "dead")))
    old_slots = ids(h, SlotDelivery)
    assert old_events and old_outbox and old_slots and funnel_before["SZ001"].adds == 2

    # Day 91: the same again, recent.
    h.clock.advance(days=91)
    day91 = h.clock.now().date()
    add_and_join(h, "SZ002")
    at(h, day91, 10)
    run_slot(h.c, "10:00", day91)
    h.clock.advance(60)
    h.pump()
    recent_closed = open_chain(h)
    order(h, recent_closed, "钱先生", "8888")
    close_chain(h, recent_closed)
    recent_events = ids(h, Event) - old_events
    recent_outbox = ids(h, Outbox) - old_outbox
    recent_slots = ids(h, SlotDelivery) - old_slots
    assert recent_events and recent_outbox and recent_slots

    counts = purge_old_rows(h.c)                      # retention_days: 90, the default

    assert counts == {"event": len(old_events), "outbox": len(old_outbox), "slot_delivery": len(old_slots),
                      "chain_order": 2, "chain_buyer": 2}
    assert ids(h, Event) == recent_events | set(stuck[:2])
    assert ids(h, Outbox) == recent_outbox | set(stuck[2:])
    assert ids(h, SlotDelivery) == recent_slots
    # names and phone tails of the old closed chain are gone; its quantities and totals stay
    assert orders_of(h, old_closed) == [("", "", "", 2), ("", "", "", 1)] and buyers_of(h, old_closed) == 0
    assert chain(h, old_closed).stock_left == 7
    assert orders_of(h, old_open) == [("赵姐", "4321", "赵姐|4321", 1)] and buyers_of(h, old_open) == 1
    assert orders_of(h, recent_closed) == [("钱先生", "8888", "钱先生|8888", 1)] and buyers_of(h, recent_closed) == 1
    # the old day's report: the same funnel, welcomes, chains and findings; its slot lines went
    after = report(h, MONDAY)
    assert without_slots(after) == without_slots(before)
    assert "Broadcasts: no slot planned" in after and "Broadcasts: no slot planned" not in before
    assert any("sold 3/10 in 2 orders" in line for line in after)
    with reads_of(h.c.sessions)() as s:
        assert funnel(s, MONDAY, MONDAY, h.c.settings.tz) == funnel_before
    # and the recent day's report still has everything
    assert "Broadcasts: no slot planned" not in report(h, day91)

    assert set(purge_old_rows(h.c).values()) == {0}  # a second pass finds nothing


def test_a_row_settled_recently_stays_even_if_it_was_created_long_ago(synced):
    """The age of a settled outbox row counts from when it settled."""
    h = synced
    now = h.clock.now()
    with h.c.sessions.begin() as s:
        row = Outbox(key="long-retried", kind="app_message", payload={}, status="dead",
                     created_at=now - timedelta(days=100), next_attempt_at=now, done_at=now - timedelta(days=1))
        s.add(row)
    assert retention.purge(h.c.sessions, h.clock, 90)["outbox"] == 0
    h.clock.advance(days=90)
    assert retention.purge(h.c.sessions, h.clock, 90)["outbox"] == 1
