"""QR findings: reading the funnel facts for the stalled rule, and opening, resolving and clearing
findings (one open finding per store and kind, so a second pass alerts nobody twice).

Transitions are conditional, so passes that run at once (two `qr check`s, two schedulers, a join
being settled) alert once per transition and never after an all-clear: a store's transitions are
serialized on its row (PostgreSQL: FOR UPDATE; SQLite: every write transaction holds the write lock
from BEGIN IMMEDIATE), a finding opens only if none is open (unique open_key) and none was cleared
since the pass looked, and it clears by `UPDATE … WHERE open_key IS NOT NULL`: only the pass whose
update took the row tells the clerks.

- stalled: adds keep coming through the store QR but nobody joins (bot.funnel.stalled).
- full: every group behind the join way is at the 200 scan-join cap and the join way cannot
  create a room; gone: the join way or contact way no longer exists at WeCom, or the store has
  none. Both are read at WeCom by bot.provisioning.checks, which repairs what sync can repair.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import and_, exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from bot.clock import Clock
from bot.config import QrHealthSettings
from bot.db.models import FunnelFact, QrFinding, Store
from bot.funnel import alerts
from bot.funnel.stalled import BASELINE, StalledVerdict, expected_conversion, stalled_verdict

log = logging.getLogger(__name__)


def conversion_counts(s: Session, since: datetime, until: datetime, store_code: str | None = None) -> tuple[int, int]:
    """(adds, adds followed by a QR join at the same store) with the add in [since, until)."""
    j = aliased(FunnelFact)
    joined = exists().where(and_(j.kind == "join", j.external_userid == FunnelFact.external_userid,
                                 j.store_code == FunnelFact.store_code, j.at >= FunnelFact.at))
    q = select(func.count(), func.count().filter(joined)).where(
        FunnelFact.kind == "add", FunnelFact.store_code.is_not(None), FunnelFact.at >= since, FunnelFact.at < until)
    if store_code:
        q = q.where(FunnelFact.store_code == store_code)
    adds, converted = s.execute(q).one()
    return adds or 0, converted or 0


def baseline_counts(s: Session, store_code: str, now: datetime, cfg: QrHealthSettings) -> tuple[int, int]:
    """The store's own conversion over the BASELINE before the rule's window: what it is expected to convert."""
    window_start = now - timedelta(minutes=cfg.window_minutes)
    return conversion_counts(s, window_start - BASELINE, window_start, store_code)


def evaluate_stalled(s: Session, store_code: str, now: datetime, cfg: QrHealthSettings,
                     chain_rate: float | None, *, looked_at_once: bool = False,
                     baseline: tuple[int, int] | None = None) -> StalledVerdict:
    """Adds count once they are older than the grace: a customer needs a minute to scan the
    group QR of the welcome, and a burst of adds is handled before its joins are read.
    looked_at_once: the rule is read on one occasion (a report), not on every add, so the
    correction for how often it is looked at does not apply. baseline: baseline_counts, when the
    caller keeps them."""
    window_start = now - timedelta(minutes=cfg.window_minutes)
    ripe = now - timedelta(minutes=cfg.grace_minutes)
    last_join = s.scalar(select(func.max(FunnelFact.at)).where(FunnelFact.kind == "join",
                                                               FunnelFact.store_code == store_code))
    # adds before the last all-clear were judged already: a stall reopens from fresh adds only
    last_clear = s.scalar(select(func.max(QrFinding.resolved_at)).where(QrFinding.store_code == store_code,
                                                                        QrFinding.kind == "stalled"))
    start = max(t for t in (window_start, last_join, last_clear) if t is not None)
    adds = list(s.scalars(select(FunnelFact.at).where(FunnelFact.kind == "add", FunnelFact.store_code == store_code,
                                                      FunnelFact.at > start, FunnelFact.at <= ripe)
                          .order_by(FunnelFact.at)))
    own_adds, own_converted = baseline or baseline_counts(s, store_code, now, cfg)
    return stalled_verdict(adds, expected_conversion(own_adds, own_converted, chain_rate, cfg.min_rate), cfg,
                           adds_per_day=0.0 if looked_at_once else own_adds / BASELINE.days)


def chain_rate(s: Session, now: datetime, cfg: QrHealthSettings) -> float | None:
    window_start = now - timedelta(minutes=cfg.window_minutes)
    adds, converted = conversion_counts(s, window_start - BASELINE, window_start)
    return converted / adds if adds >= 50 else None


def open_findings(s: Session, store_codes: list[str] | None = None) -> list[QrFinding]:
    q = select(QrFinding).where(QrFinding.open_key.is_not(None)).order_by(QrFinding.opened_at)
    if store_codes is not None:
        q = q.where(QrFinding.store_code.in_(store_codes))
    return list(s.scalars(q))


class QrHealth:
    """Opens, repairs and resolves findings; queues the clerk messages in the caller's transaction."""

    def __init__(self, clock: Clock, cfg: QrHealthSettings):
        self.clock = clock
        self.cfg = cfg
        self._chain_rate: tuple[datetime, float | None] | None = None
        self._baselines: dict[str, tuple[datetime, tuple[int, int]]] = {}

    def chain_rate(self, s: Session, now: datetime) -> float | None:
        if self._chain_rate is None or now - self._chain_rate[0] > timedelta(minutes=10):
            self._chain_rate = (now, chain_rate(s, now, self.cfg))
        return self._chain_rate[1]

    def baseline(self, s: Session, store_code: str, now: datetime) -> tuple[int, int]:
        """baseline_counts, kept ten minutes per store like the chain's rate: a week ending two hours ago
        hardly moves in ten minutes, and counting it was two thirds of the check run on every add
        (inside the welcome's transaction)."""
        kept = self._baselines.get(store_code)
        if kept is None or abs(now - kept[0]) > timedelta(minutes=10):
            kept = self._baselines[store_code] = (now, baseline_counts(s, store_code, now, self.cfg))
        return kept[1]

    @staticmethod
    def lock(s: Session, store_code: str) -> None:
        """Serialize the store's transitions until the caller's transaction ends; what is read after
        this sees every transition committed before it."""
        s.execute(select(Store.code).where(Store.code == store_code).with_for_update())

    @staticmethod
    def _cleared_since(s: Session, store_code: str, kind: str, seen_at: datetime) -> bool:
        return s.scalar(select(exists().where(QrFinding.store_code == store_code, QrFinding.kind == kind,
                                              QrFinding.resolved_at >= seen_at))) or False

    # stalled, on every add and on schedule
    def check_stalled(self, s: Session, store_code: str, now: datetime) -> QrFinding | None:
        self.lock(s, store_code)   # before the facts are read: a join settled meanwhile is seen
        v = evaluate_stalled(s, store_code, now, self.cfg, self.chain_rate(s, now),
                             baseline=self.baseline(s, store_code, now))
        if v.stalled:
            return self.open(s, store_code, "stalled", v.since or now,
                             {"adds": v.adds, "p": round(v.p, 3), "chance": v.chance,
                              "window_minutes": self.cfg.window_minutes}, seen_at=now)
        return None

    def open(self, s: Session, store_code: str, kind: str, since: datetime, evidence: dict, *,
             seen_at: datetime) -> QrFinding | None:
        """A new finding, or None when the same one is already open (no second alert) or one was
        cleared at or after `seen_at`, when the evidence was read (a pass that looked before a repair
        must not alarm after its all-clear)."""
        self.lock(s, store_code)
        key = f"{store_code}:{kind}"
        if s.scalar(select(exists().where(QrFinding.open_key == key))) or \
                self._cleared_since(s, store_code, kind, seen_at):
            return None
        try:
            with s.begin_nested():
                f = QrFinding(store_code=store_code, kind=kind, open_key=key, since=since,
                              evidence=evidence, opened_at=self.clock.now())
                s.add(f)
                s.flush()
        except IntegrityError:   # a writer that did not take the lock
            return None
        log.warning("QR finding %s at %s: %s", kind, store_code, evidence)
        return f

    def repaired(self, s: Session, store_code: str, kind: str, since: datetime, evidence: dict, note: str, *,
                 seen_at: datetime) -> QrFinding | None:
        """A finding seen and repaired in one pass, recorded resolved, so the clerk hears both in one
        message; None when another pass already cleared it since `seen_at` (it told the clerk)."""
        self.lock(s, store_code)
        if self._cleared_since(s, store_code, kind, seen_at):
            return None
        f = QrFinding(store_code=store_code, kind=kind, since=since, evidence=evidence, opened_at=seen_at,
                      resolved_at=self.clock.now(), repaired=note[:200])
        s.add(f)
        s.flush()
        return f

    def resolve(self, s: Session, store_code: str, kinds: tuple[str, ...], note: str | None = None, *,
                seen_at: datetime | None = None, works_at: datetime | None = None) -> list[QrFinding]:
        """Clear the store's open findings of these kinds; returns only those this call cleared. With
        `seen_at` (when the healthy state was read), a finding opened after it stays open: a pass
        that looked before a break must not clear it."""
        self.lock(s, store_code)
        values: dict = {"open_key": None, "resolved_at": self.clock.now()}
        if note:
            values["repaired"] = note[:200]
        stmt = (update(QrFinding).where(QrFinding.store_code == store_code, QrFinding.kind.in_(kinds),
                                        QrFinding.open_key.is_not(None))
                .values(**values).returning(QrFinding.id).execution_options(synchronize_session=False))
        if seen_at is not None:
            stmt = stmt.where(QrFinding.opened_at <= seen_at)
        if works_at is not None:   # the QR worked at works_at: only a finding of silence from before then is over
            stmt = stmt.where(QrFinding.since <= works_at)
        ids = list(s.scalars(stmt))
        if not ids:
            return []
        return list(s.scalars(select(QrFinding).where(QrFinding.id.in_(ids)).order_by(QrFinding.id)
                              .execution_options(populate_existing=True)))

    def on_joins(self, s: Session, joins: list[FunnelFact], now: datetime) -> None:
        """A QR join clears the store's stalled and reported findings (it works again), with an all-clear to
        its clerks: those whose silence began before the join (a sync can find a join hours after it,
        older than the break)."""
        latest: dict[str, datetime] = {}
        for j in joins:
            if j.kind == "join" and j.store_code:
                latest[j.store_code] = max(j.at, latest.get(j.store_code, j.at))
        # sorted: two settles locking the same stores take them in one order (no deadlock)
        for store_code in sorted(latest):
            cleared = self.resolve(s, store_code, ("stalled", "reported"), works_at=latest[store_code])
            if cleared:
                alerts.notify(s, self.clock, cleared, resolved=True)
