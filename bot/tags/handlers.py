"""The tags' face to the event pipeline: an add through a store QR queues the store's tag."""

from __future__ import annotations

from bot.config import TagSettings
from bot.events import ContactAdded
from bot.messaging.inbox import StoredEvent
from bot.messaging.uow import UnitOfWork
from bot.tags.marks import mark_added


def on_contact_added(evt: ContactAdded, uow: UnitOfWork, stored: StoredEvent, tag_settings: TagSettings) -> list:
    store = uow.stores.by_code(evt.state)
    if store is None or evt.half or not evt.userid or not evt.external_userid:
        # not through a store QR: no store to tag with. A half add (the clerk has not confirmed yet) is
        # no relation yet, and mark_tag needs one; its add_external_contact brings the tag.
        return []
    mark_added(uow.session, uow.clock.now(), tag_settings, store=store, userid=evt.userid,
               external_userid=evt.external_userid, event_id=stored.id)
    return []


HANDLERS = {ContactAdded: [on_contact_added]}
