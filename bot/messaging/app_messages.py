"""The one outbound channel to WeCom members (clerks, ops): app messages through `message/send`.
Every domain queues them (command replies, QR alerts, chain notices, slot reminders) as outbox rows
of kind `app_message` with a payload from bot.text.app_text (or a textcard)."""

from __future__ import annotations

from bot.db.models import Outbox
from bot.messaging.outbox import Executor
from bot.wecom.client import WeComClient

KIND = "app_message"


def send_app_message(client: WeComClient, row: Outbox) -> dict:
    """enable_duplicate_check makes a crash-repeated send harmless."""
    p = row.payload
    return client.app_message.send(agent_id=client.agent_id, touser=p["touser"], msgtype=p["msgtype"],
                                   content=p["content"])


def app_message_executor() -> Executor:
    return Executor(KIND, send_app_message)


EXECUTORS = {KIND: app_message_executor}
