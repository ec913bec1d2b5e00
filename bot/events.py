"""Domain events: what WeCom told us, typed, in the bot's own words. Past tense; no wechatpy."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class DomainEvent:
    at: datetime  # CreateTime of the callback


@dataclass(frozen=True)
class ContactAdded(DomainEvent):
    """A customer added a clerk (add_external_contact / add_half_external_contact)."""
    userid: str
    external_userid: str
    state: str | None
    welcome_code: str | None
    half: bool = False


@dataclass(frozen=True)
class ContactRemoved(DomainEvent):
    """del_external_contact: the clerk deleted the customer (source DELETE_BY_TRANSFER on transfer)."""
    userid: str
    external_userid: str
    source: str | None = None


@dataclass(frozen=True)
class FollowUserDeleted(DomainEvent):
    """del_follow_user: the customer deleted the clerk."""
    userid: str
    external_userid: str


@dataclass(frozen=True)
class ContactChanged(DomainEvent):
    """edit_external_contact, transfer_fail and other contact changes the bot only records."""
    change_type: str
    userid: str
    external_userid: str
    fail_reason: str | None = None


@dataclass(frozen=True)
class GroupChatChanged(DomainEvent):
    """change_external_chat. join_scene: 0 invited, 3 scanned a group QR (no state in the callback)."""
    chat_id: str
    change_type: str                  # create | update | dismiss
    update_detail: str | None = None  # add_member | del_member | change_owner | change_name | change_notice
    join_scene: int | None = None
    quit_scene: int | None = None
    mem_change_cnt: int | None = None
    member_ids: tuple[str, ...] = ()
    last_mem_ver: str | None = None
    cur_mem_ver: str | None = None


@dataclass(frozen=True)
class TagChanged(DomainEvent):
    tag_id: str
    tag_type: str
    change_type: str
    strategy_id: int | None = None


@dataclass(frozen=True)
class StaffChanged(DomainEvent):
    """change_contact: a member was created, updated or deleted (create_user | update_user | delete_user).
    update_user may carry NewUserID (the member's userid was changed) and Status (5: 退出企业)."""
    change_type: str
    userid: str
    new_userid: str | None = None
    status: int | None = None


@dataclass(frozen=True)
class ClerkTextReceived(DomainEvent):
    """A clerk wrote to the app (commands)."""
    userid: str
    content: str
    msg_id: int
    agent_id: int


@dataclass(frozen=True)
class UnhandledCallback(DomainEvent):
    """A callback the bot stores but has no use for (yet)."""
    kind: str
    fields: dict = field(default_factory=dict, compare=False)
