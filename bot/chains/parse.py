"""`开团 open` arguments, in the clerk's own words. Pure: text + now → OpenChainArgs, or a
CommandSyntaxError whose message says exactly what is missing or unclear, with an example.
Money, stock, limit and deadline are never guessed."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo

EXAMPLE_ZH = "例如：开团 阳光玫瑰葡萄 39.9元 200份 每人限2 截止周六18:00"
EXAMPLE_EN = 'e.g. open "Sunshine grape" price=39.9 stock=200 limit=2 until="2026-11-28 18:00"'
MAX_PRICE = Decimal("100000")
MAX_STOCK = 100_000
WEEKDAYS = {"一": 0, "二": 1, "三": 2, "四": 3, "五": 4, "六": 5, "日": 6, "天": 6}


class CommandSyntaxError(ValueError):
    """What to tell the clerk."""


@dataclass(frozen=True)
class OpenChainArgs:
    title: str
    price_cents: int
    stock: int
    limit: int
    deadline: datetime
    opens_at: datetime | None = None
    pickup_note: str | None = None
    store_code: str | None = None


def _price(text: str) -> int:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise CommandSyntaxError(f"价格“{text}”不是数字。{EXAMPLE_ZH}") from None
    if value <= 0 or value > MAX_PRICE:
        raise CommandSyntaxError(f"价格 {text} 不合理（应在 0.01 到 {MAX_PRICE} 元之间）。")
    if value != value.quantize(Decimal("0.01")):
        raise CommandSyntaxError(f"价格 {text} 最多两位小数（到分）。")
    return int(value * 100)


def _count(text: str, what: str, upper: int) -> int:
    if not re.fullmatch(r"\d+", text):
        raise CommandSyntaxError(f"{what}“{text}”应是整数。")
    n = int(text)
    if not 1 <= n <= upper:
        raise CommandSyntaxError(f"{what} {n} 不合理（应在 1 到 {upper} 之间）。")
    return n


def _clock_time(text: str) -> time | None:
    m = re.fullmatch(r"(\d{1,2})(?::|：|点)(\d{2})?分?|(\d{1,2})点半", text)
    if not m:
        return None
    if m.group(3):
        h, mi = int(m.group(3)), 30
    else:
        h, mi = int(m.group(1)), int(m.group(2) or 0)
    if h > 23 or mi > 59:
        raise CommandSyntaxError(f"时间“{text}”不对。")
    return time(h, mi)


def parse_when(text: str, now: datetime, tz: ZoneInfo, what: str = "截止时间") -> datetime:
    """周六18:00, 明天12:00, 今天20:00, 后天9点, 11-28 18:00, 11月28日18:00, 2026-11-28 18:00."""
    local = now.astimezone(tz)
    t = text.strip().replace("星期", "周").replace("礼拜", "周")
    m = re.fullmatch(r"(今天|明天|后天|周[一二三四五六日天]|(?:(\d{4})[-/])?(\d{1,2})[-/月](\d{1,2})日?)\s*(.*)", t)
    if not m:
        raise CommandSyntaxError(f"{what}“{text}”看不懂。请写成 周六18:00、明天12:00 或 11-28 18:00。")
    day_word, year, month, dom, rest = m.groups()
    clock = _clock_time(rest.strip()) if rest.strip() else None
    if clock is None:
        raise CommandSyntaxError(f"{what}“{text}”缺少几点几分，例如 {day_word or ''}18:00。")
    if day_word in ("今天", "明天", "后天"):
        d = local.date() + timedelta(days={"今天": 0, "明天": 1, "后天": 2}[day_word])
    elif day_word and day_word.startswith("周"):
        ahead = (WEEKDAYS[day_word[1]] - local.weekday()) % 7
        d = local.date() + timedelta(days=ahead)
        if ahead == 0 and clock <= local.time():
            d += timedelta(days=7)
    else:
        y = int(year) if year else local.year
        try:
            d = date(y, int(month), int(dom))
        except ValueError:
            raise CommandSyntaxError(f"{what}“{text}”不是有效日期。") from None
        if not year and datetime.combine(d, clock, tz) <= local:
            d = date(y + 1, d.month, d.day)
    return datetime.combine(d, clock, tz)


def _iso_when(text: str, tz: ZoneInfo, what: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("/", "-"))
    except ValueError:
        raise CommandSyntaxError(f'{what} "{text}" is not a date and time like "2026-11-28 18:00".') from None
    return value.replace(tzinfo=tz) if value.tzinfo is None else value


# one pattern per field; Chinese forms first, then key=value
FIELDS = [
    ("price", re.compile(r"(?:[¥￥](\d+(?:\.\d+)?)|(\d+(?:\.\d+)?)元|(?:price|价格)=(\S+))$", re.I)),
    ("stock", re.compile(r"(?:(\d+)份|库存(\d+)|(?:stock|库存)=(\S+))$", re.I)),
    ("limit", re.compile(r"(?:每人限购?(\d+)份?|限购?(\d+)份?|(?:limit|限购)=(\S+))$", re.I)),
    ("deadline", re.compile(r"(?:截止(.+)|(?:until|deadline|截止)=(.+))$", re.I)),
    ("opens", re.compile(r"(?:开始(.+)|(?:from|start|开始)=(.+))$", re.I)),
    ("pickup", re.compile(r"(?:取货[:：](.+)|(?:pickup|取货)=(.+))$", re.I)),
    ("store", re.compile(r"(?:门店[:：=]?([A-Za-z0-9_-]+)|store=(\S+))$", re.I)),
]


def _split(text: str) -> list[str]:
    # 截止周六 18:00 with a space: glue the time back to the day
    text = re.sub(r"(截止|开始)\s*(\S+)\s+(\d{1,2}[:：点]\d{0,2})", r"\1\2 \3", text)
    try:
        tokens = shlex.split(text.replace("“", '"').replace("”", '"'))
    except ValueError:
        raise CommandSyntaxError("引号没有配对。" + EXAMPLE_EN) from None
    out: list[str] = []
    for tok in tokens:  # "截止周六" "18:00" → one token; until=2026-11-28 18:00 unquoted likewise
        if out and re.fullmatch(r"\d{1,2}[:：点]\d{0,2}分?", tok) and re.search(r"(截止|开始|=)", out[-1]):
            out[-1] = f"{out[-1]} {tok}"
        else:
            out.append(tok)
    return out


def parse_open_args(text: str, now: datetime, tz: ZoneInfo) -> OpenChainArgs:
    tokens = _split(text)
    title_parts: list[str] = []
    found: dict[str, str] = {}
    for tok in tokens:
        for name, pattern in FIELDS:
            m = pattern.fullmatch(tok)
            if m:
                if name in found:
                    raise CommandSyntaxError(f"“{tok}”和“{found[name]}”重复了，请只写一个。")
                found[name] = next(g for g in m.groups() if g is not None)
                found[name + "_raw"] = tok
                break
        else:
            if found:
                raise CommandSyntaxError(f"看不懂“{tok}”。商品名写在最前面；{EXAMPLE_ZH}")
            title_parts.append(tok)
    title = " ".join(title_parts).strip()
    missing = [zh for key, zh in (("price", "价格（如 39.9元）"), ("stock", "份数（如 200份）"),
                                  ("limit", "每人限购（如 每人限2）"), ("deadline", "截止时间（如 截止周六18:00）"))
               if key not in found]
    if not title:
        missing.insert(0, "商品名")
    if missing:
        raise CommandSyntaxError("开团还缺：" + "、".join(missing) + f"。\n{EXAMPLE_ZH}\n{EXAMPLE_EN}")
    if len(title) > 60:
        raise CommandSyntaxError("商品名太长了（最多60个字）。")
    price = _price(found["price"])
    stock = _count(found["stock"], "份数", MAX_STOCK)
    limit = _count(found["limit"], "每人限购", MAX_STOCK)

    def when(key: str, what: str) -> datetime:
        raw = found[key]
        english = re.match(r"(until|deadline|from|start)=", found[key + "_raw"], re.I)
        return _iso_when(raw, tz, what) if english or re.match(r"\d{4}-", raw) else parse_when(raw, now, tz, what)

    deadline = when("deadline", "截止时间")
    opens_at = when("opens", "开始时间") if "opens" in found else None
    if deadline <= now:
        raise CommandSyntaxError(f"截止时间 {deadline:%m-%d %H:%M} 已经过了。")
    if opens_at and opens_at >= deadline:
        raise CommandSyntaxError("开始时间要早于截止时间。")
    if limit > stock:
        raise CommandSyntaxError(f"每人限购 {limit} 份超过了总份数 {stock} 份。")
    return OpenChainArgs(title, price, stock, limit, deadline, opens_at,
                         (found.get("pickup") or "").strip() or None, found.get("store"))
