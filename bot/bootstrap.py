"""The one place that wires real adapters: engine, sessions, clock, client, handlers, workers."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from bot import events as ev
from bot.clock import Clock, SystemClock
from bot.config import Settings
from bot.db.engine import make_engine, make_session_factory
from bot.db.migrate import upgrade
from bot.inbox import EventDispatcher, EventRecorder
from bot.media import MediaLibrary
from bot.metrics import Metrics
from bot.outbox import Executor, Outbox, Outcome, OutboxWorker
from bot.provisioning import Provisioner
from bot.welcome.content import WelcomeContent
import hashlib

from bot.broadcast.delivery import cancel_executor, mass_executor, remind_executor, reminder_executor
from bot.broadcast.dispatch import Broadcaster
from bot.broadcast.follow_up import FollowUp
from bot.broadcast.sidebar import SidebarLinks
from bot.calendar.calendar import ContentCalendar
from bot.chains.batcher import OrderBatcher
from bot.chains.service import Chains
from bot.commands.broadcast import router as broadcast_commands
from bot.commands.chains import router as chain_commands
from bot.commands.funnel import router as funnel_commands
from bot.commands.router import CommandRouter, on_clerk_text
from bot.funnel import facts
from bot.funnel.attribution import groupchat_get_executor
from bot.funnel.qr_health import QrHealth, on_contact_added_check
from bot.welcome.handlers import on_contact_added
from bot.welcome.sender import welcome_executor
from bot.wecom.callback import CallbackVerifier
from bot.wecom.client import WeComClient
from bot.wecom.token_store import SqlTokenStore, TokenStore
from bot.worker import Doorbell, WorkerPool, worker_id

log = logging.getLogger(__name__)

# Domain event → handlers. Later capabilities (funnel, commands, chains) add theirs here.
HANDLERS: dict[type, list] = {
    ev.ContactAdded: [on_contact_added, facts.on_contact_added, on_contact_added_check],
    ev.FollowUserDeleted: [facts.on_follow_user_deleted],
    ev.GroupChatChanged: [facts.on_group_chat_changed],
    ev.ClerkTextReceived: [on_clerk_text],
}


def command_router() -> CommandRouter:
    """Every clerk command; later capabilities include their routers here."""
    router = CommandRouter()
    router.include(funnel_commands)
    router.include(chain_commands)
    router.include(broadcast_commands)
    return router


def app_message_executor() -> Executor:
    """message/send to clerks. enable_duplicate_check makes a crash-repeated send harmless."""

    def send(client: WeComClient, row: Outbox) -> dict:
        body = {"touser": "|".join(row.payload["touser"]), "agentid": client.agent_id,
                "msgtype": row.payload["msgtype"], row.payload["msgtype"]: row.payload["content"],
                "enable_duplicate_check": 1, "duplicate_check_interval": 1800}
        return client.post("message/send", data=body)

    return Executor("send", send)


@dataclass
class Container:
    settings: Settings
    clock: Clock
    engine: Engine
    sessions: sessionmaker[Session]
    client: WeComClient
    verifier: CallbackVerifier
    content: WelcomeContent
    media: MediaLibrary
    metrics: Metrics
    doorbell: Doorbell = field(default_factory=Doorbell)
    executors: dict[str, Executor] = field(default_factory=dict)
    workers: WorkerPool | None = None
    recorder: EventRecorder | None = None
    qr_health: QrHealth | None = None
    commands: CommandRouter | None = None
    chains: Chains | None = None
    order_batcher: OrderBatcher | None = None
    calendar: ContentCalendar | None = None
    sidebar_links: SidebarLinks | None = None
    broadcaster: Broadcaster | None = None

    def __post_init__(self) -> None:
        self.recorder = EventRecorder(self.sessions, self.clock, on_stored=self.doorbell.ring)
        self.qr_health = QrHealth(self.clock, self.settings.qr_health)
        self.commands = command_router()
        # signs clerks' CSV links; derived from secrets only the bot has
        key = hashlib.sha256(b"csv:" + self.settings.wecom.secret.get_secret_value().encode()
                             + self.settings.admin_token.get_secret_value().encode()).digest()
        self.chains = Chains(self.settings.public_base_url, key, self.clock)
        self.order_batcher = OrderBatcher(self.sessions, self.chains, on_notified=self.doorbell.ring)
        st = self.settings
        self.calendar = ContentCalendar(st.path(st.calendar_dir), slots=st.broadcast.slots,
                                        store_codes=[x.code for x in st.stores])
        self.sidebar_links = SidebarLinks(st.public_base_url, hashlib.sha256(b"sidebar:" + key).digest())
        self.broadcaster = Broadcaster(self.sessions, self.clock, self.calendar, st.broadcast, self.chains,
                                       self.sidebar_links.link)

    def follow_up(self) -> FollowUp:
        return FollowUp(self.sessions, self.client, self.clock, self.settings.broadcast)

    def migrate(self) -> None:
        upgrade(self.engine)

    def dispatcher(self, name: str = "dispatch") -> EventDispatcher:
        deps = {"welcome_content": self.content, "qr_health": self.qr_health, "commands": self.commands,
                "command_deps": {"tz": self.settings.tz, "chains": self.chains, "broadcaster": self.broadcaster,
                                 "sidebar_links": self.sidebar_links}}
        return EventDispatcher(self.sessions, self.clock, HANDLERS, deps,
                               owner=worker_id(name), lease_seconds=self.settings.worker.lease_seconds)

    def outbox_worker(self, name: str = "outbox") -> OutboxWorker:
        return OutboxWorker(self.sessions, self.client, self.clock, self.executors, owner=worker_id(name),
                            lease_seconds=self.settings.worker.lease_seconds, on_settled=self._settled)

    def _settled(self, row: Outbox, outcome: Outcome) -> None:
        self.metrics.outbox.labels(row.kind, outcome.status).inc()

    def provisioner(self) -> Provisioner:
        return Provisioner(self.sessions, self.client, self.clock, self.media)

    def start_workers(self, outbox_threads: int | None = None, dispatch_threads: int = 2) -> WorkerPool:
        pool = WorkerPool(self.doorbell, self.settings.worker.poll_seconds)
        for i in range(dispatch_threads):
            d = self.dispatcher(f"dispatch-{i}")

            def dispatch_once(d=d) -> int:
                n = d.run_once()
                if n:
                    self.doorbell.ring()  # outbox rows may be waiting now
                return n
            pool.add(f"dispatch-{i}", dispatch_once)
        for i in range(outbox_threads or self.settings.worker.threads):
            pool.add(f"outbox-{i}", self.outbox_worker(f"outbox-{i}").run_once)
        pool.start()
        self.workers = pool
        return pool

    def close(self) -> None:
        self.recorder.stop()
        self.order_batcher.stop()
        if self.workers:
            self.workers.stop()
        self.engine.dispose()


def bootstrap(settings: Settings, *, clock: Clock | None = None, engine: Engine | None = None,
              token_store: TokenStore | None = None, migrate: bool = False) -> Container:
    clock = clock or SystemClock(settings.tz)
    engine = engine or make_engine(settings.resolved_database_url)
    sessions = make_session_factory(engine)
    metrics = Metrics()
    w = settings.wecom
    client = WeComClient(w.corp_id, w.secret.get_secret_value(), agent_id=w.agent_id, api_base_url=w.api_base_url,
                         token_store=token_store or SqlTokenStore(sessions, clock), clock=clock,
                         timeout=w.timeout_seconds, max_attempts=w.max_attempts, on_call=metrics.on_wecom_call,
                         calls_per_minute=w.calls_per_minute)
    verifier = CallbackVerifier(token=w.token.get_secret_value(), encoding_aes_key=w.encoding_aes_key.get_secret_value(),
                                corp_id=w.corp_id, clock=clock,
                                max_skew_seconds=settings.callback.max_clock_skew_seconds,
                                max_body_bytes=settings.callback.max_body_bytes)
    content = WelcomeContent(Path(settings.path(settings.calendar_dir)))
    media = MediaLibrary(sessions, client, clock)
    c = Container(settings, clock, engine, sessions, client, verifier, content, media, metrics)
    app_messages = app_message_executor()
    c.executors = {"send_welcome_msg": welcome_executor(sessions, media, content), "send": app_messages,
                   "groupchat_get": groupchat_get_executor(c.qr_health.on_joins),
                   "add_msg_template": mass_executor(media, c.calendar),
                   "slot_reminder": reminder_executor(app_messages.send),
                   "remind_groupmsg_send": remind_executor(), "cancel_groupmsg_send": cancel_executor()}
    if migrate:
        c.migrate()
    return c
