"""The staff domain's face to the event pipeline: change_contact (a member created, updated,
deleted) becomes the roster's work in the event's own transaction; what only ops can fix is told
in one message per 10-minute bucket."""

from __future__ import annotations

from bot import events as ev
from bot.staff.roster import Roster


def on_staff_changed(evt: ev.StaffChanged, uow, stored, roster: Roster) -> list:
    now = stored.received_at
    lines = roster.on_change(uow.session, evt.change_type, evt.userid, now, status=evt.status,
                             new_userid=evt.new_userid)
    roster.tell(uow.session, lines, now)
    return []


HANDLERS = {
    ev.StaffChanged: [on_staff_changed],
}
