"""A small command registry (aiogram's shape): the trigger sits on the function it triggers, the
router resolves the clerk once, and `帮助 help` is generated from what is registered."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from bot.db.models import Store
from bot.messaging.inbox import wanted_args
from bot.messaging.uow import UnitOfWork

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reply:
    text: str


@dataclass
class Clerk:
    userid: str
    stores: list[Store] = field(default_factory=list)

    @property
    def store_codes(self) -> list[str]:
        return [s.code for s in self.stores]


@dataclass
class Command:
    names: tuple[str, ...]
    summary: str
    handler: Callable[..., Reply]
    wanted: tuple[str, ...] = ()    # the handler's parameter names, read once at registration


ROUTER_ARGS = {"args", "clerk", "router", "uow", "now"}   # what the router itself hands every command


class CommandRouter:
    def __init__(self) -> None:
        self.commands: list[Command] = []

    def command(self, *names: str, summary: str):
        def register(fn):
            self.commands.append(Command(tuple(names), summary, fn, tuple(inspect.signature(fn).parameters)))
            return fn
        return register

    def include(self, other: CommandRouter) -> None:
        self.commands.extend(other.commands)

    def check(self, deps: set[str]) -> None:
        """At start-up: every command's arguments are provided, or WiringError names the one that is not."""
        for cmd in self.commands:
            wanted_args(cmd.handler, ROUTER_ARGS | deps)

    def find(self, word: str) -> Command | None:
        word = word.lower()
        return next((c for c in self.commands if word in (n.lower() for n in c.names)), None)

    def help_text(self) -> str:
        lines = ["可用命令（中文或英文都可以）："]
        lines += [f"· {' / '.join(c.names)}：{c.summary}" for c in self.commands]
        return "\n".join(lines)

    def handle(self, text: str, clerk: Clerk, deps: dict[str, Any]) -> Reply:
        word, _, rest = text.strip().partition(" ")
        cmd = self.find(word) if word else None
        if cmd is None:
            return Reply(("没看懂这条命令。" if word else "") + "\n" + self.help_text())
        available = {"args": rest.strip(), "clerk": clerk, "router": self, **deps}
        return cmd.handler(**{k: available[k] for k in cmd.wanted})


def resolve_clerk(uow: UnitOfWork, userid: str) -> Clerk:
    # every open store listing the clerk: a clerk may serve several (a closed store is history only)
    stores = [s for s in uow.session.scalars(select(Store).where(Store.closed_at.is_(None)).order_by(Store.code))
              if userid in (s.clerks or [])]
    return Clerk(userid, stores)
