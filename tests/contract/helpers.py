from sqlalchemy import func, select

from bot.db.engine import reads_of
from bot.db.models import Event, Outbox, Welcome


def count(h, model, **where) -> int:
    with reads_of(h.c.sessions)() as s:
        q = select(func.count()).select_from(model)
        for k, v in where.items():
            q = q.where(getattr(model, k) == v)
        return s.scalar(q)


def welcomes(h) -> list[Welcome]:
    with reads_of(h.c.sessions)() as s:
        return list(s.scalars(select(Welcome).order_by(Welcome.id)))


def outbox(h) -> list[Outbox]:
    with reads_of(h.c.sessions)() as s:
        return list(s.scalars(select(Outbox).order_by(Outbox.id)))


__all__ = ["count", "welcomes", "outbox", "Event"]
