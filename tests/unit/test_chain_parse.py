from datetime import datetime

import pytest

from bot.chains.parse import CommandSyntaxError, parse_open_args
from bot.clock import SHANGHAI

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=SHANGHAI)   # a Monday


def p(text):
    return parse_open_args(text, NOW, SHANGHAI)


@pytest.mark.parametrize("text, title, price, stock, limit, deadline", [
    ("阳光玫瑰葡萄 39.9元 200份 每人限2 截止周六18:00", "阳光玫瑰葡萄", 3990, 200, 2, "2026-11-28 18:00"),
    ("阳光玫瑰葡萄 ¥39.9 限2 200份 截止明天12:00", "阳光玫瑰葡萄", 3990, 200, 2, "2026-11-24 12:00"),
    ("丹东草莓 截止11-28 18:00 25元 每人限1 50份", "丹东草莓", 2500, 50, 1, "2026-11-28 18:00"),
    ('"Sunshine grape" price=39.9 stock=200 limit=2 until="2026-11-28 18:00"', "Sunshine grape", 3990, 200, 2,
     "2026-11-28 18:00"),
    ("Sunshine grape price=39.9 stock=200 limit=2 until=2026-11-28 18:00", "Sunshine grape", 3990, 200, 2,
     "2026-11-28 18:00"),
    ("面包 ￥12 300份 限购3 截止周六 18点", "面包", 1200, 300, 3, "2026-11-28 18:00"),
    ("车厘子 99元 100份 每人限2份 截止今天20:30", "车厘子", 9900, 100, 2, "2026-11-23 20:30"),
    ("牛油果 8.5元 10份 限1 截止周一9:00", "牛油果", 850, 10, 1, "2026-11-30 09:00"),   # today passed: next week
])
def test_real_phrasings(text, title, price, stock, limit, deadline):
    a = p(text)
    assert (a.title, a.price_cents, a.stock, a.limit) == (title, price, stock, limit)
    assert a.deadline.strftime("%Y-%m-%d %H:%M") == deadline and a.deadline.tzinfo is not None


def test_pickup_opening_and_store():
    a = p("阳光玫瑰葡萄 39.9元 200份 每人限2 截止周六18:00 开始周五12:00 取货:周日到店自提 门店SZ001")
    assert a.opens_at.strftime("%m-%d %H:%M") == "11-27 12:00"
    assert a.pickup_note == "周日到店自提" and a.store_code == "SZ001"


@pytest.mark.parametrize("text, says", [
    ("阳光玫瑰葡萄 200份 每人限2 截止周六18:00", "价格"),
    ("阳光玫瑰葡萄 39.9元 每人限2 截止周六18:00", "份数"),
    ("阳光玫瑰葡萄 39.9元 200份 截止周六18:00", "每人限购"),
    ("阳光玫瑰葡萄 39.9元 200份 每人限2", "截止时间"),
    ("39.9元 200份 每人限2 截止周六18:00", "商品名"),
    ("葡萄 39.9元 200份 每人限2 截止周六", "缺少几点几分"),
    ("葡萄 39.999元 200份 每人限2 截止周六18:00", "两位小数"),
    ("葡萄 0元 200份 每人限2 截止周六18:00", "不合理"),
    ("葡萄 39.9元 0份 每人限2 截止周六18:00", "不合理"),
    ("葡萄 39.9元 2份 每人限5 截止周六18:00", "超过了总份数"),
    ("葡萄 39.9元 200份 每人限2 截止今天9:00", "已经过了"),
    ("葡萄 39.9元 40元 200份 每人限2 截止周六18:00", "重复"),
    ("葡萄 39.9元 200份 每人限2 截止周六18:00 随便", "看不懂"),
    ('葡萄 price=abc stock=200 limit=2 until="2026-11-28 18:00"', "不是数字"),
    ('葡萄 39.9元 200份 每人限2 until="next saturday"', "2026-11-28 18:00"),
    ("葡萄 39.9元 200份 每人限2 截止13-45 18:00", "不是有效日期"),
])
def test_missing_or_wrong_is_said_exactly(text, says):
    with pytest.raises(CommandSyntaxError) as e:
        p(text)
    assert says in str(e.value)
