"""Clerk commands' face to the event pipeline: a clerk's text to the app runs the command router."""

from __future__ import annotations

import logging

from bot import events as ev
from bot.commands.broadcast import router as broadcast_commands
from bot.commands.chains import router as chain_commands
from bot.commands.churn import router as churn_commands
from bot.commands.funnel import router as funnel_commands
from bot.commands.router import CommandRouter, Reply, resolve_clerk
from bot.messaging.inbox import StoredEvent
from bot.messaging.uow import UnitOfWork
from bot.text import app_text

log = logging.getLogger(__name__)


def command_router() -> CommandRouter:
    """Every clerk command, in the order `帮助 help` lists them."""
    router = CommandRouter()
    router.include(funnel_commands)
    router.include(churn_commands)
    router.include(chain_commands)
    router.include(broadcast_commands)
    return router


def on_clerk_text(evt: ev.ClerkTextReceived, uow: UnitOfWork, stored: StoredEvent, commands: CommandRouter,
                  command_deps: dict) -> list:
    clerk = resolve_clerk(uow, evt.userid)
    if not clerk.stores:
        reply = Reply("你还不是任何门店的店员，请联系运营把你加到门店配置里。")
    else:
        try:
            reply = commands.handle(evt.content, clerk, {"uow": uow, "now": stored.received_at, **command_deps})
        except Exception:  # never silence: a short reply, the details in the log with the event id
            log.exception("command %r from %s (event %s) failed", evt.content, evt.userid, stored.id)
            reply = Reply(f"处理出错了，已记录（编号 {stored.id}），请稍后再试。")
    uow.outbox.add("app_message", f"reply:{evt.msg_id or stored.id}", app_text(evt.userid, reply.text), priority=0)
    return []


HANDLERS = {ev.ClerkTextReceived: [on_clerk_text]}
