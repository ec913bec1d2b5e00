"""Unit of work: one transaction for a handler's state change, its outbox rows and "event handled" (an
urgent event's welcome commits in a unit of its own first: bot.messaging.inbox)."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from bot.clock import Clock
from bot.db.models import Store
from bot.messaging.outbox import OutboxRepo


class StoreRepo:
    def __init__(self, session: Session):
        self.session = session
        # The session's identity map holds objects weakly: a store the first handler read is gone by the
        # next one, and each handler of an add read it again (four SELECTs an add). Held here for the
        # unit of work, it is read once.
        self._held: dict[str, Store | None] = {}

    def by_code(self, code: str | None) -> Store | None:
        if not code:
            return None
        if code not in self._held:
            self._held[code] = self.session.get(Store, code)
        return self._held[code]


class UnitOfWork:
    def __init__(self, sessions: sessionmaker[Session], clock: Clock):
        self.sessions = sessions
        self.clock = clock

    def __enter__(self) -> UnitOfWork:
        self.session = self.sessions()
        self.session.begin()
        self.outbox = OutboxRepo(self.session, self.clock)
        self.stores = StoreRepo(self.session)
        return self

    def __exit__(self, *exc) -> None:
        if self.session.in_transaction():
            self.session.rollback()  # leaving without commit() undoes everything
        self.session.close()

    def commit(self) -> None:
        self.session.commit()

    def rollback(self) -> None:
        self.session.rollback()
