"""A believable corp for the sandbox: the configured stores' clerks, each with customer groups."""

from __future__ import annotations

import random
import secrets
import string
from collections.abc import Iterable

from bot.sandbox.backend import Corp, WeComBackend


def new_corp(agent_id: int = 1000002) -> Corp:
    alnum = string.ascii_letters + string.digits
    return Corp(corp_id="ww" + secrets.token_hex(8), secret=secrets.token_urlsafe(32), agent_id=agent_id,
                token=secrets.token_hex(12), encoding_aes_key="".join(secrets.choice(alnum) for _ in range(43)))


def seed_stores(backend: WeComBackend, stores: Iterable, *, groups_per_clerk: int = 2,
                members: tuple[int, int] = (60, 180), rng: random.Random | None = None) -> dict[str, list[str]]:
    """Clerks and their groups for each store (objects with .code/.name/.clerks); chat_ids per store."""
    rng = rng or random.Random(7)
    out: dict[str, list[str]] = {}
    for store in stores:
        for clerk in store.clerks:
            backend.add_clerk(clerk)
            for i in range(groups_per_clerk):
                chat = backend.create_group(clerk, f"{store.name}福利{len(out.get(store.code, [])) + 1}群",
                                            members=rng.randint(*members))
                out.setdefault(store.code, []).append(chat)
    return out
