"""On a new contact: record it and queue the welcome (outbox) inside WeCom's 20 s window."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from bot.db.models import Welcome
from bot.events import ContactAdded
from bot.funnel.qr_page import QrPages
from bot.messaging.inbox import StoredEvent, urgent
from bot.messaging.outbox import insert_ignore
from bot.messaging.uow import UnitOfWork
from bot.welcome.content import WelcomeContent

WELCOME_WINDOW = timedelta(seconds=20)


@dataclass(frozen=True)
class WelcomeQueued:
    store_code: str
    external_userid: str


@dataclass(frozen=True)
class WelcomeSkipped:
    external_userid: str
    reason: str


@urgent   # idempotent: the Welcome row and the outbox key are unique per add
def on_contact_added(evt: ContactAdded, uow: UnitOfWork, stored: StoredEvent,
                     welcome_content: WelcomeContent, qr_pages: QrPages) -> list:
    store = uow.stores.by_code(evt.state)
    reason = None
    if not evt.welcome_code:
        reason = "no_code"             # an admin-console welcome is set, or they have chatted before
    elif store is None:
        reason = "unknown_state" if evt.state else "no_state"
    row = dict(event_id=stored.id, store_code=store.code if store else None, state=evt.state,
               userid=evt.userid, external_userid=evt.external_userid, welcome_code=evt.welcome_code,
               status="skipped" if reason else "queued", reason=reason, event_at=stored.received_at)
    if not insert_ignore(uow.session, Welcome, row) or reason:
        return [WelcomeSkipped(evt.external_userid, reason or "already_recorded")]
    rendered = welcome_content.render(store_code=store.code, store_name=store.name, clerk=evt.userid,
                                      store_benefit=store.benefit)
    uow.outbox.add("send_welcome_msg", f"welcome:{evt.welcome_code}",
                   {"event_id": stored.id, "event_at": stored.received_at.isoformat(),
                    "welcome_code": evt.welcome_code, "store_code": store.code,
                    "text": rendered.text, "attach_group_qr": rendered.attach_group_qr,
                    "attachments": rendered.attachments,
                    # the group-QR page of this add: the customer who cannot scan can say so there
                    "page_link": qr_pages.attachment(store.code, stored.id)},
                   deadline=stored.received_at + WELCOME_WINDOW, priority=0)
    return [WelcomeQueued(store.code, evt.external_userid)]


HANDLERS = {ContactAdded: [on_contact_added]}
