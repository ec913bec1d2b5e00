"""Tables. Singular names; WeCom ids keep WeCom's names; `_at` columns are aware UTC."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from bot.db.types import UTCDateTime


def _at(nullable: bool = True, **kw: Any):
    return Field(default=None, sa_type=UTCDateTime, nullable=nullable, **kw)


class Event(SQLModel, table=True):
    """One WeCom callback, stored once (delivery_key) before it is acknowledged."""

    __tablename__ = "event"
    __table_args__ = (Index("ix_event_due", "status", "priority", "next_attempt_at"),)

    id: int | None = Field(default=None, primary_key=True)
    delivery_key: str = Field(max_length=80, unique=True)
    kind: str = Field(max_length=80)  # e.g. change_external_contact/add_external_contact
    priority: int = 1  # 0 first: adds with a 20 s welcome window, clerks waiting for a reply
    payload: str = Field(sa_column=Column(Text, nullable=False))  # the decrypted XML
    received_at: datetime = _at(nullable=False)
    status: str = Field(default="pending", max_length=16)  # pending | running | done | failed
    attempts: int = 0
    next_attempt_at: datetime = _at(nullable=False)
    claimed_by: str | None = Field(default=None, max_length=64)
    lease_until: datetime | None = _at()
    handled_at: datetime | None = _at()
    # an urgent event's urgent handlers committed (the welcome is queued); the rest runs as priority 1
    urgent_done_at: datetime | None = _at()
    last_error: str | None = Field(default=None, sa_column=Column(Text))


class Outbox(SQLModel, table=True):
    """One intended WeCom call. `key` is the idempotency key: a second add is a no-op."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_due", "status", "priority", "next_attempt_at"),)

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=160, unique=True)
    kind: str = Field(max_length=64)  # the WeCom endpoint's last segment: send_welcome_msg, send, …
    priority: int = 1  # 0 first: calls with a deadline of seconds (welcomes)
    payload: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: str = Field(default="pending", max_length=16)  # pending | running | unknown | done | expired | dead
    # The call may have reached WeCom without its answer reaching us (a lost answer, a lapsed lease,
    # a dead worker): the next attempt reconciles with WeCom before it calls again.
    uncertain: bool = False
    created_at: datetime = _at(nullable=False)
    deadline: datetime | None = _at()
    next_attempt_at: datetime = _at(nullable=False)
    attempts: int = 0
    claimed_by: str | None = Field(default=None, max_length=64)
    lease_until: datetime | None = _at()
    done_at: datetime | None = _at()
    last_errcode: int | None = None
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    result: dict | None = Field(default=None, sa_column=Column(JSON))


class Store(SQLModel, table=True):
    """A store as configured, plus what `sync` created for it at WeCom."""

    __tablename__ = "store"

    code: str = Field(primary_key=True, max_length=30)
    name: str = Field(max_length=100)
    clerks: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    benefit: str | None = Field(default=None, max_length=200)
    contact_way_config_id: str | None = Field(default=None, max_length=64)
    contact_way_qr_code: str | None = Field(default=None, max_length=500)
    join_way_config_id: str | None = Field(default=None, max_length=64)
    join_way_qr_code: str | None = Field(default=None, max_length=500)
    join_way_chat_ids: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    synced_at: datetime | None = _at()
    # `sync --prune --apply` after the store left the config: its QR configs are deleted at WeCom, it gets
    # no broadcasts and no QR checks; its rows stay for the reports. Listed in config again: reopened.
    closed_at: datetime | None = _at()


class GroupChat(SQLModel, table=True):
    """A clerk's customer group as last read from groupchat/get."""

    __tablename__ = "group_chat"

    chat_id: str = Field(primary_key=True, max_length=64)
    store_code: str = Field(index=True, max_length=30)
    owner: str = Field(max_length=64)
    name: str | None = Field(default=None, max_length=100)
    member_count: int = 0
    member_version: str | None = Field(default=None, max_length=64)
    synced_at: datetime | None = _at()
    # change_external_chat dismiss: out of every later slot and of its store's join way; kept for history.
    dismissed_at: datetime | None = _at()


class MediaCache(SQLModel, table=True):
    """Temporary media (media/upload, 3 days) keyed by what it shows; re-uploaded before expiry."""

    __tablename__ = "media_cache"

    key: str = Field(primary_key=True, max_length=160)  # e.g. group_qr:SZ001
    source: str = Field(max_length=500)  # what was uploaded (URL or file digest): a change re-uploads
    media_id: str = Field(max_length=200)
    uploaded_at: datetime = _at(nullable=False)
    expires_at: datetime = _at(nullable=False)


class Welcome(SQLModel, table=True):
    """What became of each new contact's welcome: one row per add event."""

    __tablename__ = "welcome"
    __table_args__ = (UniqueConstraint("event_id"),)

    id: int | None = Field(default=None, primary_key=True)
    event_id: int = Field(index=True)
    store_code: str | None = Field(default=None, index=True, max_length=30)
    state: str | None = Field(default=None, max_length=30)
    userid: str = Field(max_length=64)
    external_userid: str = Field(max_length=64)
    welcome_code: str | None = Field(default=None, max_length=128)
    status: str = Field(max_length=16)  # queued | sent | already | expired | skipped | failed
    reason: str | None = Field(default=None, max_length=64)
    event_at: datetime = _at(nullable=False)  # when the bot received the add event
    sent_at: datetime | None = _at()
    latency_ms: int | None = None
    qr_attached: bool = False


class WeComToken(SQLModel, table=True):
    """The app's access_token, shared by every process; the lease lets one process refresh."""

    __tablename__ = "wecom_token"

    key: str = Field(primary_key=True, max_length=160)
    value: str | None = Field(default=None, max_length=600)
    expires_at: datetime | None = _at()
    lease_owner: str | None = Field(default=None, max_length=64)
    lease_until: datetime | None = _at()


class WeComRate(SQLModel, table=True):
    """Calls made to one WeCom API in one window (the clock minute or hour), counted by every process:
    the shared rate limit (bot/wecom/pacer.py SqlPacer). Rows two hours past are purged as it goes."""

    __tablename__ = "wecom_rate"

    corp_id: str = Field(primary_key=True, max_length=64)
    endpoint: str = Field(primary_key=True, max_length=120)
    window_seconds: int = Field(primary_key=True)      # 60 | 3600
    window_start: int = Field(primary_key=True, sa_type=BigInteger)   # epoch seconds
    calls: int = 0


class FunnelFact(SQLModel, table=True):
    """One step of the add → join funnel, attributed to a store by its QR `state`.

    kind: add (a customer added a clerk through the store QR), join (joined a store group through
    the store's group QR), join_other (joined without state: an invite, the owner's own QR),
    leave (left a store group), clerk_deleted (the customer deleted the clerk)."""

    __tablename__ = "funnel_fact"
    __table_args__ = (Index("ix_funnel_store_at", "store_code", "at"), Index("ix_funnel_ext", "external_userid"),
                      Index("ix_funnel_at", "at"))   # /admin: today's facts of every store

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=200, unique=True)  # derived from the fact: a re-run adds nothing
    kind: str = Field(max_length=16)
    store_code: str | None = Field(default=None, max_length=30)
    chat_id: str | None = Field(default=None, max_length=64)
    userid: str | None = Field(default=None, max_length=64)
    external_userid: str = Field(max_length=64)
    at: datetime = _at(nullable=False)
    join_delay_seconds: int | None = None  # join: seconds since this customer's add at the store


class GroupMember(SQLModel, table=True):
    """A customer group's member list as last read from groupchat/get."""

    __tablename__ = "group_member"

    chat_id: str = Field(primary_key=True, max_length=64)
    userid: str = Field(primary_key=True, max_length=64)
    type: int = 2
    join_scene: int | None = None
    state: str | None = Field(default=None, max_length=30)
    join_time: int | None = None
    present: bool = True
    name: str | None = Field(default=None, max_length=64)   # groupchat/get need_name: shown masked only


class QrFinding(SQLModel, table=True):
    """Something wrong with a store's QR codes, open until it clears. One open finding per
    (store, kind): `open_key` is set while open and NULL after (NULLs do not collide)."""

    __tablename__ = "qr_finding"

    id: int | None = Field(default=None, primary_key=True)
    store_code: str = Field(index=True, max_length=30)
    kind: str = Field(max_length=16)  # stalled | full | gone
    open_key: str | None = Field(default=None, max_length=64, unique=True)
    since: datetime = _at(nullable=False)
    evidence: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    opened_at: datetime = _at(nullable=False)
    resolved_at: datetime | None = _at()
    repaired: str | None = Field(default=None, max_length=200)


class Chain(SQLModel, table=True):
    """A group-buy chain (团购接龙) a clerk opened for a store."""

    __tablename__ = "chain"

    id: int | None = Field(default=None, primary_key=True)
    token: str = Field(max_length=32, unique=True)      # the page's URL part
    store_code: str = Field(index=True, max_length=30)
    clerk: str = Field(max_length=64)                   # who opened it: gets the pick list
    title: str = Field(max_length=60)
    price_cents: int
    stock_total: int
    stock_left: int                                     # taken only by conditional UPDATE
    per_person_limit: int
    opens_at: datetime = _at(nullable=False)
    deadline: datetime = _at(nullable=False)
    pickup_note: str | None = Field(default=None, max_length=200)
    status: str = Field(default="open", max_length=16)  # open | closed
    closed_at: datetime | None = _at()
    closed_reason: str | None = Field(default=None, max_length=16)  # deadline | early
    created_at: datetime = _at(nullable=False)
    notified_half: bool = False
    notified_sold_out: bool = False


class ChainOrder(SQLModel, table=True):
    __tablename__ = "chain_order"
    __table_args__ = (UniqueConstraint("chain_id", "request_id"),)

    id: int | None = Field(default=None, primary_key=True)
    chain_id: int = Field(index=True)
    order_token: str = Field(max_length=32, unique=True)  # the buyer's handle to cancel
    request_id: str = Field(max_length=64)                # a retried submit is the same order
    buyer_key: str = Field(max_length=80)
    name: str = Field(max_length=40)
    phone_tail: str = Field(max_length=4)
    qty: int
    chat_id: str | None = Field(default=None, max_length=64)
    store_code: str = Field(max_length=30)
    status: str = Field(default="active", max_length=16)  # active | cancelled | voided (cancelled_at set by both)
    created_at: datetime = _at(nullable=False)
    cancelled_at: datetime | None = _at()


class ChainBuyer(SQLModel, table=True):
    """What one person (name + phone tail) holds in a chain: the per-person limit, kept atomically."""

    __tablename__ = "chain_buyer"

    chain_id: int = Field(primary_key=True)
    buyer_key: str = Field(primary_key=True, max_length=80)
    qty: int = 0


class SlotDelivery(SQLModel, table=True):
    """How one broadcast slot reaches one group on one day: planned once, sent at most once."""

    __tablename__ = "slot_delivery"
    __table_args__ = (UniqueConstraint("day", "slot", "chat_id"), Index("ix_slot_delivery_owner", "day", "owner"),
                      Index("ix_slot_delivery_msgid", "msgid"))

    id: int | None = Field(default=None, primary_key=True)
    day: str = Field(max_length=10)                       # YYYY-MM-DD in the configured zone
    slot: str = Field(max_length=5)                       # HH:MM
    chat_id: str = Field(max_length=64)
    store_code: str = Field(max_length=30)
    owner: str = Field(max_length=64)                     # the group's owner clerk: sender or reminded
    mode: str = Field(max_length=16)                      # mass | reminder
    kind: str | None = Field(default=None, max_length=16)  # the calendar entry's kind, at firing
    # planned → (paused | skipped) or queued → awaiting (mass, owner to confirm) → sent | failed | cancelled;
    # reminder: queued → reminded → sent (the clerk tapped send in the sidebar)
    status: str = Field(default="planned", max_length=16)
    reason: str | None = Field(default=None, max_length=120)
    msgid: str | None = Field(default=None, max_length=64)   # the mass message's WeCom msgid
    planned_at: datetime = _at(nullable=False)
    fired_at: datetime | None = _at()
    sent_at: datetime | None = _at()
    opened_at: datetime | None = _at()                    # the clerk opened the sidebar for this group
    tapped_at: datetime | None = _at()                    # … and tapped send


class BroadcastTask(SQLModel, table=True):
    """One add_msg_template: a slot's mass message for one owner clerk's groups of one store (the
    content is the store's; a clerk serving two stores gets one task per store)."""

    __tablename__ = "broadcast_task"
    __table_args__ = (UniqueConstraint("day", "slot", "sender", "store_code",
                                       name="uq_broadcast_task_day_slot_sender_store"),)

    id: int | None = Field(default=None, primary_key=True)
    day: str = Field(max_length=10)
    slot: str = Field(max_length=5)
    sender: str = Field(max_length=64)
    store_code: str = Field(default="", max_length=30)
    msgid: str | None = Field(default=None, max_length=64, index=True)
    status: str = Field(default="creating", max_length=16)  # creating | awaiting | sent | cancelled | failed
    created_at: datetime = _at(nullable=False)
    expires_at: datetime | None = _at()                   # cancel it if still unconfirmed then
    reminds: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))  # remind times (ISO)
    synced_at: datetime | None = _at()
    finished_at: datetime | None = _at()


class GroupReceipt(SQLModel, table=True):
    """A mass message a group received (ours or a clerk's own): what the receive cap counts."""

    __tablename__ = "group_receipt"
    __table_args__ = (Index("ix_group_receipt_chat", "chat_id", "sent_at"),)

    chat_id: str = Field(primary_key=True, max_length=64)
    msgid: str = Field(primary_key=True, max_length=64)
    sent_at: datetime = _at(nullable=False)
    source: str = Field(max_length=16)                    # bot | personal


class GroupMsgSeen(SQLModel, table=True):
    """A clerk's own mass message found by get_groupmsg_list_v2, and whether its results are final."""

    __tablename__ = "groupmsg_seen"

    msgid: str = Field(primary_key=True, max_length=64)
    creator: str = Field(max_length=64)
    create_time: datetime = _at(nullable=False)
    settled: bool = False


class BroadcastPause(SQLModel, table=True):
    """暂停: a clerk's groups skip the rest of the day's slots."""

    __tablename__ = "broadcast_pause"

    day: str = Field(primary_key=True, max_length=10)
    clerk: str = Field(primary_key=True, max_length=64)
    created_at: datetime = _at(nullable=False)


class SchedulerLease(SQLModel, table=True):
    """Which process runs the scheduled jobs. Taken and renewed by conditional UPDATE every tick
    (bot.scheduler); a holder that cannot renew steps down, a standby takes over once lease_until
    has passed. heartbeat_at is the holder's last renewal (/healthz reads it)."""

    __tablename__ = "scheduler_lease"

    name: str = Field(primary_key=True, max_length=32)
    holder: str | None = Field(default=None, max_length=120)   # host:pid:random of the process
    heartbeat_at: datetime | None = _at()
    lease_until: datetime | None = _at()


class WorkerProcess(SQLModel, table=True):
    """A process that runs workers, with its heartbeat (bot.messaging.heartbeat). Its rows' leases are
    renewed while it beats; once it stops beating (or, on its own host, its pid is gone) any other
    process takes its claims back, well inside a welcome's 20 s."""

    __tablename__ = "worker_process"

    id: str = Field(primary_key=True, max_length=64)           # host:pid:random, the prefix of claimed_by
    host: str = Field(max_length=64)
    pid: int
    role: str = Field(max_length=16)
    started_at: datetime = _at(nullable=False)
    beat_at: datetime = _at(nullable=False)


class MemberMessage(SQLModel, table=True):
    """An app message WeCom accepted for one member: the per-member limits (30 a minute, 1,000 an
    hour, beyond which WeCom drops silently) are counted here, across processes, and a repeat of the
    same text inside the duplicate-check interval is told apart from WeCom's dedup."""

    __tablename__ = "member_message"
    __table_args__ = (Index("ix_member_message_user_at", "userid", "sent_at"),)

    id: int | None = Field(default=None, primary_key=True)
    userid: str = Field(max_length=64)
    sent_at: datetime = _at(nullable=False)
    digest: str = Field(max_length=16)       # of msgtype + content: "the same message" to WeCom's check
    outbox_id: int | None = None


class CorpTag(SQLModel, table=True):
    """A corp customer tag (企业客户标签) the bot marks customers with, by (group name, tag name): its
    WeCom ids, so a mark needs no get_corp_tag_list. Forgotten when WeCom says the id is gone (40068)."""

    __tablename__ = "corp_tag"

    group_name: str = Field(primary_key=True, max_length=30)
    name: str = Field(primary_key=True, max_length=30)
    tag_id: str = Field(max_length=64)
    group_id: str = Field(max_length=64)
    created_by_bot: bool = False          # add_corp_tag made it: only such tags may the app edit or delete
    seen_at: datetime = _at(nullable=False)


class AdminAction(SQLModel, table=True):
    """An ops-console POST (bot.admin.actions): who did what to which store, when, and what came of it
    (also when it found the thing already done: a double submit is on record as such)."""

    __tablename__ = "admin_action"
    __table_args__ = (Index("ix_admin_action_store_at", "store_code", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = _at(nullable=False)
    userid: str = Field(max_length=64)                   # the WeCom member; "admin_token" for Bearer
    action: str = Field(max_length=16)                   # fire | pause | resume | sync | close_chain
    store_code: str = Field(max_length=30)
    target: str = Field(default="", max_length=64)       # the slot (HH:MM), the chain id
    outcome: str = Field(max_length=200)                 # what the flash message said
    detail: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
