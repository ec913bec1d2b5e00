"""What people read: WeCom's byte limits and the one shape of an app text message, prices in yuan, and
members' names and phone tails masked wherever others see them."""

APP_TEXT_MAX_BYTES = 2048   # message/send text: 45002 past this


def truncate_utf8(text: str, limit: int) -> str:
    data = text.encode("utf-8")
    return text if len(data) <= limit else data[:limit].decode("utf-8", "ignore")


def app_text(userid: str, content: str) -> dict:
    """An outbox payload for a message/send text to one clerk, cut to WeCom's byte limit."""
    return {"touser": [userid], "msgtype": "text", "content": {"content": truncate_utf8(content, APP_TEXT_MAX_BYTES)}}


def fit_lines(head: str, lines: list[str], footer: str, limit: int = APP_TEXT_MAX_BYTES) -> str:
    """head, as many lines as fit, an ellipsis line if some were left out, then the footer (kept whole)."""
    used = len(head.encode()) + len(footer.encode()) + 2
    kept = []
    for i, line in enumerate(lines):
        more = f"……还有 {len(lines) - i} 条" if i < len(lines) else ""
        if used + len(line.encode()) + 1 + len(more.encode()) + 1 > limit:
            kept.append(more)
            break
        kept.append(line)
        used += len(line.encode()) + 1
    return "\n".join([head, *kept, footer])


def yuan(cents: int) -> str:
    """3990 → "39.9", 4000 → "40"."""
    return f"{cents / 100:.2f}".rstrip("0").rstrip(".")


def mask_name(name: str) -> str:
    """王阿姨 → 王**: the sign-up list is read by the whole group."""
    return name[0] + "*" * min(2, max(1, len(name) - 1)) if name else "*"


def mask_phone(tail: str) -> str:
    return "**" + tail[-2:]
