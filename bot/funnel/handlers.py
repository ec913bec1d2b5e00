"""The funnel's face to the event pipeline: which domain event becomes which funnel work."""

from __future__ import annotations

from bot import events as ev
from bot.funnel import alerts, facts
from bot.funnel.findings import QrHealth


def on_contact_added_check(evt: ev.ContactAdded, uow, stored, qr_health: QrHealth) -> list:
    """After each add through a store QR: is the store stalled now?"""
    store = uow.stores.by_code(evt.state)
    if store is None:
        return []
    f = qr_health.check_stalled(uow.session, store.code, stored.received_at)
    if f:
        alerts.notify(uow.session, qr_health.clock, [f])
    return []


HANDLERS = {
    ev.ContactAdded: [facts.on_contact_added, on_contact_added_check],
    ev.FollowUserDeleted: [facts.on_follow_user_deleted],
    ev.GroupChatChanged: [facts.on_group_chat_changed],
}
