"""The one place that wires real adapters: engine, sessions, clock, client, workers, and the domain
modules' HANDLERS (event → handlers) and EXECUTORS (outbox kind → executor factory), merged here.
Every handler's and executor factory's arguments are resolved by name once, when the container is
built: a misnamed dependency fails at start-up, not in a worker at 10:00."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from sqlalchemy import Engine

from bot.broadcast import executors as broadcast_executors
from bot.broadcast.dispatch import Broadcaster
from bot.broadcast.follow_up import FollowUp
from bot.broadcast.sidebar import SidebarLinks
from bot.calendar.calendar import ContentCalendar
from bot.chains.batcher import OrderBatcher
from bot.chains.service import Chains
from bot.clock import Clock, SystemClock
from bot.commands import handlers as command_handlers
from bot.config import Settings
from bot.db.engine import make_engine, make_session_factory
from bot.db.migrate import upgrade
from bot.funnel import executors as funnel_executors
from bot.funnel import handlers as funnel_handlers
from bot.funnel.findings import QrHealth
from bot.links import LinkSigner
from bot.media import MediaLibrary
from bot.messaging import app_messages
from bot.messaging.inbox import EventDispatcher, EventRecorder, wanted_args
from bot.messaging.outbox import Executor, Outbox, Outcome, OutboxWorker
from bot.funnel.qr_page import QrPages
from bot.messaging.app_messages import AppMessages
from bot.messaging.heartbeat import Heartbeat, LeaseBook
from bot.messaging.worker import Doorbell, WorkerPool, worker_id
from bot.metrics import Metrics
from bot.provisioning import Provisioner
from bot.provisioning import executors as provisioning_executors
from bot.provisioning.checks import check_wecom_side
from bot.staff import executors as staff_executors
from bot.staff import handlers as staff_handlers
from bot.staff.roster import Roster
from bot.tags import executors as tag_executors
from bot.tags import handlers as tag_handlers
from bot.tags.marks import mark_joined
from bot.welcome import executors as welcome_executors
from bot.welcome import handlers as welcome_handlers
from bot.welcome.content import WelcomeContent
from bot.wecom.pacer import SqlPacer
from bot.wecom.callback import CallbackVerifier
from bot.wecom.client import WeComClient
from bot.wecom.token_store import SqlTokenStore, TokenStore

log = logging.getLogger(__name__)

RELOAD_SECONDS = 10   # how soon an edit of content_calendar/ reaches every worker process

# In this order: for an add, the welcome is queued before the funnel's work (its 20 s run first).
HANDLER_MAPS = (welcome_handlers.HANDLERS, funnel_handlers.HANDLERS, command_handlers.HANDLERS)
HANDLER_MAPS += (staff_handlers.HANDLERS,)        # staff turnover (issue 13)
HANDLER_MAPS += (tag_handlers.HANDLERS,)          # store tags (issue 14)
EXECUTOR_MAPS = (welcome_executors.EXECUTORS, funnel_executors.EXECUTORS, broadcast_executors.EXECUTORS,
                 app_messages.EXECUTORS, provisioning_executors.EXECUTORS)
EXECUTOR_MAPS += (staff_executors.EXECUTORS,)     # contact way without a departed clerk; handovers
EXECUTOR_MAPS += (tag_executors.EXECUTORS,)       # mark_tag (store tags, issue 14)


def merge_handlers(*maps: Mapping[type, list]) -> dict[type, list]:
    merged: dict[type, list] = {}
    for m in maps:
        for event_type, handlers in m.items():
            merged.setdefault(event_type, []).extend(handlers)
    return merged


def build_executors(maps: tuple[Mapping[str, Callable[..., Executor]], ...], deps: dict) -> dict[str, Executor]:
    """Call each kind's factory with the dependencies it names; a kind declared twice is an error."""
    out: dict[str, Executor] = {}
    for m in maps:
        for kind, factory in m.items():
            if kind in out:
                raise ValueError(f"outbox kind {kind!r} has two executors")
            out[kind] = factory(**{n: deps[n] for n in wanted_args(factory, set(deps))})
    return out


class Container:
    """Everything a process of the bot holds, built in one go."""

    def __init__(self, settings: Settings, *, clock: Clock | None = None, engine: Engine | None = None,
                 token_store: TokenStore | None = None):
        st = self.settings = settings
        self.clock = clock = clock or SystemClock(st.tz)
        self.engine = engine or make_engine(st.resolved_database_url)
        self.sessions = sessions = make_session_factory(self.engine)
        self.metrics = Metrics(sessions, clock)   # reads backlog and heartbeats on scrape
        w = st.wecom
        pacer = None
        if self.engine.dialect.name == "postgresql":   # several processes, maybe several hosts: one count
            pacer = SqlPacer(self.engine, clock, w.calls_per_minute, w.calls_per_hour, corp_id=w.corp_id,
                             expected_processes=w.expected_processes)
        self.client = WeComClient(w.corp_id, w.secret.get_secret_value(), agent_id=w.agent_id,
                                  api_base_url=w.api_base_url,
                                  token_store=token_store or SqlTokenStore(sessions, clock), clock=clock,
                                  timeout=w.timeout_seconds, max_attempts=w.max_attempts,
                                  on_call=self.metrics.on_wecom_call, calls_per_minute=w.calls_per_minute, calls_per_hour=w.calls_per_hour,
                                  pacer=pacer)
        self.verifier = CallbackVerifier(token=w.token.get_secret_value(),
                                         encoding_aes_key=w.encoding_aes_key.get_secret_value(), corp_id=w.corp_id,
                                         clock=clock, max_skew_seconds=st.callback.max_clock_skew_seconds,
                                         max_body_bytes=st.callback.max_body_bytes)
        self.content = WelcomeContent(Path(st.path(st.calendar_dir)))
        self.media = MediaLibrary(sessions, self.client, clock)
        # Two bells: a stored event wakes the dispatchers only, a queued outbox row the senders only.
        # One bell for both woke four idle outbox threads for every stored event.
        self.doorbell = Doorbell()               # outbox rows are waiting (rung by whoever queues them)
        self.event_bell = Doorbell()             # events are waiting (rung by the callback's recorder)
        self.workers: WorkerPool | None = None   # only in processes that run workers (start_workers)
        self.leases = LeaseBook()                # rows this process's workers hold, renewed by its heartbeat
        self.heartbeat: Heartbeat | None = None
        self._reloaded_at = self.clock.timestamp()
        self.recorder = EventRecorder(sessions, clock, on_stored=self.event_bell.ring)
        self.qr_health = QrHealth(clock, st.qr_health)
        self.roster = Roster(st, clock, self.qr_health)   # who serves each store now (bot.staff)
        self.commands = command_handlers.command_router()
        # every signed link (sidebar, CSV, later /q and admin): admin_token signs, link_keys still verify
        self.links = LinkSigner.from_settings(st, clock)
        self.chains = Chains(st.public_base_url, self.links, clock, st.pages.csv_link_days)
        self.qr_pages = QrPages(st.public_base_url, self.links, clock, st.pages.qr_link_days)
        self.order_batcher = OrderBatcher(sessions, self.chains, on_notified=self.doorbell.ring)
        self.calendar = ContentCalendar(st.path(st.calendar_dir), slots=st.broadcast.slots,
                                        store_codes=[x.code for x in st.stores])
        self.sidebar_links = SidebarLinks(st.public_base_url, self.links, st.tz, st.pages.sidebar_link_grace_hours)
        self.broadcaster = Broadcaster(sessions, clock, self.calendar, st.broadcast, self.chains,
                                       self.sidebar_links.link)
        self.handlers = merge_handlers(*HANDLER_MAPS)
        self.handler_deps = {
            "welcome_content": self.content, "qr_health": self.qr_health, "commands": self.commands,
            "qr_pages": self.qr_pages,
            "roster": self.roster,
            "tag_settings": st.tags,
            "command_deps": {"tz": st.tz, "chains": self.chains, "broadcaster": self.broadcaster,
                             "sidebar_links": self.sidebar_links}}
        self.executors = build_executors(EXECUTOR_MAPS, {
            "sessions": sessions, "media": self.media, "welcome_content": self.content,
            "app_messages": AppMessages(sessions),
            "calendar": self.calendar, "qr_health": self.qr_health, "settings": st, "roster": self.roster,
            "clock": clock, "provisioner_for": self.provisioner})
        # every handler's and command's arguments resolved now: a misnamed one fails at start-up
        self.dispatcher()
        self.commands.check(set(self.handler_deps["command_deps"]))

    def follow_up(self) -> FollowUp:
        return FollowUp(self.sessions, self.client, self.clock, self.settings.broadcast)

    def migrate(self) -> None:
        upgrade(self.engine)

    def dispatcher(self, name: str = "dispatch") -> EventDispatcher:
        return EventDispatcher(self.sessions, self.clock, self.handlers, self.handler_deps,
                               owner=worker_id(name), lease_seconds=self.settings.worker.lease_seconds,
                               book=self.leases, on_urgent_done=self.doorbell.ring)

    def outbox_worker(self, name: str = "outbox") -> OutboxWorker:
        return OutboxWorker(self.sessions, self.client, self.clock, self.executors, owner=worker_id(name),
                            lease_seconds=self.settings.worker.lease_seconds, on_settled=self._settled,
                            book=self.leases)

    def _settled(self, row: Outbox, outcome: Outcome) -> None:
        self.metrics.on_settled(row, outcome, self.clock.now())

    def provisioner(self, client: WeComClient | None = None) -> Provisioner:
        p = Provisioner(self.sessions, client or self.client, self.clock, self.media,
                        ops_userids=self.settings.ops_userids)
        p.roster = self.roster   # sync's staff step (bot.staff.roster)
        p.on_joins = self.settle_joins
        p.tags = self.settings.tags
        return p

    def settle_joins(self, s, joins, now) -> None:
        """Joins a sync or QR pass found that no callback told of: the same all-clear and 已进群 tag."""
        self.qr_health.on_joins(s, joins, now)
        mark_joined(s, now, self.settings.tags, joins)

    def check_qr(self, store_codes: list[str] | None = None) -> dict[str, int]:
        """One QR-health pass (the 5-minute job and `wecom-bot qr check`)."""
        return check_wecom_side(self.sessions, self.client, self.clock, self.qr_health, self.provisioner(),
                                store_codes)

    def start_workers(self, outbox_threads: int | None = None, dispatch_threads: int | None = None,
                      role: str = "worker") -> WorkerPool:
        # First the heartbeat: it takes back what a killed previous run of this host left claimed,
        # and renews the leases of what these workers claim.
        self.heartbeat = Heartbeat(self.sessions, self.clock, self.leases, role=role,
                                   lease_seconds=self.settings.worker.lease_seconds)
        self.heartbeat.start()
        pool = WorkerPool(self.doorbell, self.settings.worker.poll_seconds)
        for i in range(dispatch_threads or self.settings.worker.dispatch_threads):
            d = self.dispatcher(f"dispatch-{i}")

            def dispatch_once(d=d) -> int:
                n = d.run_once()
                if n:
                    self.doorbell.ring()  # outbox rows may be waiting now
                return n
            pool.add(f"dispatch-{i}", dispatch_once, bell=self.event_bell)
        for i in range(outbox_threads or self.settings.worker.threads):
            pool.add(f"outbox-{i}", self.outbox_worker(f"outbox-{i}").run_once)
        # Every process that renders welcomes picks up ops' edits, whichever one holds the scheduler.
        pool.add("content-reload", self._reload_content)
        pool.start()
        self.workers = pool
        return pool

    def _reload_content(self) -> int:
        """Every RELOAD_SECONDS: the calendar and the welcome, read again if their files changed (a
        broken edit keeps the last good one). Not inside a welcome's 20 s."""
        now = self.clock.timestamp()
        if now - self._reloaded_at >= RELOAD_SECONDS:
            self._reloaded_at = now
            self.calendar.reload_if_changed()
            self.content.reload_if_changed()
        return 0

    def close(self) -> None:
        self.recorder.stop()
        self.order_batcher.stop()
        if self.workers:
            self.workers.stop()
        if self.heartbeat:
            self.heartbeat.stop()
        self.engine.dispose()


def bootstrap(settings: Settings, *, clock: Clock | None = None, engine: Engine | None = None,
              token_store: TokenStore | None = None, migrate: bool = False) -> Container:
    c = Container(settings, clock=clock, engine=engine, token_store=token_store)
    if migrate:
        c.migrate()
    return c
