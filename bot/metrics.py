"""Prometheus metrics, one registry per container (tests and demo build several in one process).

Counters and histograms are kept in memory by the process that counts; what lives in the database
(backlog, dead rows, heartbeats) is read on scrape by BacklogCollector, so every process's /metrics
shows the whole deployment and nothing goes stale between writes."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from bot.clock import Clock
from bot.db.engine import reads_of
from bot.db.models import Event, Outbox, SchedulerLease, WorkerProcess
from bot.messaging.claims import WAITING
from bot.messaging.outbox import Outcome
from bot.welcome.handlers import WELCOME_WINDOW
from bot.wecom import errcodes

log = logging.getLogger(__name__)

ALIVE_WITHIN = timedelta(seconds=60)   # as /healthz (bot.health.STALE_SECONDS)
WELCOME_BUCKETS = (.5, 1, 2, 3, 5, 8, 12, 16, 20, 30)   # seconds; WeCom's window is 20


class Metrics:
    def __init__(self, sessions: sessionmaker[Session] | None = None, clock: Clock | None = None) -> None:
        self.registry = CollectorRegistry()
        self.callbacks = Counter("wecom_callbacks_total", "Callbacks by result", ["result"], registry=self.registry)
        self.callback_seconds = Histogram("wecom_callback_seconds", "Time to acknowledge a callback",
                                          registry=self.registry,
                                          buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1))
        self.wecom_calls = Counter("wecom_api_calls_total", "WeCom API calls by endpoint and errcode",
                                   ["endpoint", "errcode"], registry=self.registry)
        # 45009 is in wecom_api_calls_total too; its own counter makes the alert rule one name
        self.rate_limited = Counter("wecom_api_rate_limited_total",
                                    "WeCom answers 45009 (API frequency limit), every attempt, by endpoint",
                                    ["endpoint"], registry=self.registry)
        self.app_message_refused = Counter("wecom_app_message_refused_total",
                                           "App message recipients WeCom refused (invaliduser, 81013)",
                                           registry=self.registry)
        self.outbox = Counter("wecom_outbox_settled_total", "Outbox rows settled", ["kind", "status"],
                              registry=self.registry)
        self.welcome_latency = Histogram("wecom_welcome_latency_seconds",
                                         "From the add event's receipt to WeCom accepting its welcome",
                                         registry=self.registry, buckets=WELCOME_BUCKETS)
        if sessions is not None and clock is not None:
            self.registry.register(BacklogCollector(sessions, clock))

    def on_settled(self, row: Outbox, outcome: Outcome, now: datetime) -> None:
        self.outbox.labels(row.kind, outcome.status).inc()
        if row.kind in ("app_message", "slot_reminder"):
            # what WeCom refused outright (81013: nobody valid) or in part (invaliduser): counted, not only logged
            refused = len(outcome.result.get("invaliduser") or []) if outcome.status == "done" else \
                len(row.payload.get("touser") or []) if outcome.errcode == errcodes.ALL_RECIPIENTS_INVALID else 0
            if refused:
                self.app_message_refused.inc(refused)
        if row.kind == "send_welcome_msg" and outcome.status == "done" and not outcome.result.get("already"):
            # From the add event's receipt, the origin of the welcome row's latency_ms: the row's
            # deadline is that plus the window (bot.welcome.handlers), so no query per welcome.
            # "already" (41051) was delivered by an earlier attempt: its latency is not known here.
            received = row.deadline - WELCOME_WINDOW if row.deadline else row.created_at
            self.welcome_latency.observe(max(0.0, (now - received).total_seconds()))

    def on_wecom_call(self, endpoint: str, errcode: int, _seconds: float) -> None:
        self.wecom_calls.labels(endpoint, str(errcode)).inc()
        if errcode == errcodes.API_FREQ_LIMIT:
            self.rate_limited.labels(endpoint).inc()


class BacklogCollector(Collector):
    """Reads the pipeline's tables on scrape. Each query is bounded by a status prefix of
    ix_event_due / ix_outbox_due (status, priority, next_attempt_at), so it costs the backlog or the
    dead rows, never the settled history. A database that does not answer gives
    wecom_database_up 0 and no other figure: /metrics itself still answers."""

    def __init__(self, sessions: sessionmaker[Session], clock: Clock):
        self.sessions = sessions
        self.clock = clock

    def describe(self):
        return []   # no describe at registration: it would query the database then

    def collect(self):
        up = GaugeMetricFamily("wecom_database_up", "1 when the database answered this scrape")
        try:
            with reads_of(self.sessions)() as s:   # of the engine bound now
                families = list(self._read(s))
        except SQLAlchemyError as e:
            log.warning("metrics: database not read (%s)", type(e).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _read(self, s: Session):
        now = self.clock.now()
        outbox = GaugeMetricFamily("wecom_outbox_backlog", "Outbox rows not settled yet, by kind and status",
                                   labels=["kind", "status"])
        for kind, status, n in s.execute(select(Outbox.kind, Outbox.status, func.count())
                                         .where(Outbox.status.in_(("pending", "unknown", "running")))
                                         .group_by(Outbox.kind, Outbox.status)):
            outbox.add_metric([kind, status], n)
        yield outbox

        events = GaugeMetricFamily("wecom_event_backlog", "Events not handled yet, by kind and status",
                                   labels=["kind", "status"])
        for kind, status, n in s.execute(select(Event.kind, Event.status, func.count())
                                         .where(Event.status.in_(("pending", "running")))
                                         .group_by(Event.kind, Event.status)):
            events.add_metric([kind, status], n)
        yield events

        oldest = GaugeMetricFamily("wecom_backlog_oldest_due_seconds",
                                   "How long the longest-waiting due row has waited since it came due (0: none)",
                                   labels=["table"])
        for model in (Event, Outbox):
            since = s.scalar(select(func.min(model.next_attempt_at))
                             .where(model.status.in_(WAITING), model.next_attempt_at <= now))
            oldest.add_metric([model.__tablename__], (now - since).total_seconds() if since else 0.0)
        yield oldest

        dead = GaugeMetricFamily("wecom_outbox_dead_rows", "Outbox rows that gave up (wecom-bot dead lists them)",
                                 labels=["kind"])
        for kind, n in s.execute(select(Outbox.kind, func.count()).where(Outbox.status == "dead")
                                 .group_by(Outbox.kind)):
            dead.add_metric([kind], n)
        yield dead

        failed = GaugeMetricFamily("wecom_event_failed_rows", "Events whose handlers gave up (wecom-bot dead)",
                                   labels=["kind"])
        for kind, n in s.execute(select(Event.kind, func.count()).where(Event.status == "failed")
                                 .group_by(Event.kind)):
            failed.add_metric([kind], n)
        yield failed

        alive = s.scalar(select(func.count()).select_from(WorkerProcess)
                         .where(WorkerProcess.beat_at >= now - ALIVE_WITHIN))
        yield GaugeMetricFamily("wecom_worker_processes", "Processes running workers that beat within a minute",
                                value=alive or 0)

        beat = GaugeMetricFamily("wecom_scheduler_heartbeat_age_seconds",
                                 "Since the scheduler lease holder last renewed it", labels=["name"])
        for name, at in s.execute(select(SchedulerLease.name, SchedulerLease.heartbeat_at)):
            if at is not None:
                beat.add_metric([name], (now - at).total_seconds())
        yield beat
