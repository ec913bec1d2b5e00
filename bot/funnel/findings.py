"""QR findings: reading the funnel facts for the stalled rule, and opening, resolving and clearing
findings (one open finding per store and kind, so a second pass alerts nobody twice).

- stalled: adds keep coming through the store QR but nobody joins (bot.funnel.stalled).
- full: every group behind the join way is at the 200 scan-join cap and the join way cannot
  create a room; gone: the join way or contact way no longer exists at WeCom, or the store has
  none. Both are read at WeCom by bot.provisioning.checks, which repairs what sync can repair.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import and_, exists, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from bot.clock import Clock
from bot.config import QrHealthSettings
from bot.db.models import FunnelFact, QrFinding
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


def evaluate_stalled(s: Session, store_code: str, now: datetime, cfg: QrHealthSettings,
                     chain_rate: float | None) -> StalledVerdict:
    """Adds count once they are older than the grace: a customer needs a minute to scan the
    group QR of the welcome, and a burst of adds is handled before its joins are read."""
    window_start = now - timedelta(minutes=cfg.window_minutes)
    ripe = now - timedelta(minutes=cfg.grace_minutes)
    last_join = s.scalar(select(func.max(FunnelFact.at)).where(FunnelFact.kind == "join",
                                                               FunnelFact.store_code == store_code))
    start = max(window_start, last_join) if last_join else window_start
    adds = list(s.scalars(select(FunnelFact.at).where(FunnelFact.kind == "add", FunnelFact.store_code == store_code,
                                                      FunnelFact.at > start, FunnelFact.at <= ripe)
                          .order_by(FunnelFact.at)))
    own_adds, own_converted = conversion_counts(s, window_start - BASELINE, window_start, store_code)
    return stalled_verdict(adds, expected_conversion(own_adds, own_converted, chain_rate, cfg.min_rate), cfg,
                           adds_per_day=own_adds / BASELINE.days)


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

    def chain_rate(self, s: Session, now: datetime) -> float | None:
        if self._chain_rate is None or now - self._chain_rate[0] > timedelta(minutes=10):
            self._chain_rate = (now, chain_rate(s, now, self.cfg))
        return self._chain_rate[1]

    # stalled, on every add and on schedule
    def check_stalled(self, s: Session, store_code: str, now: datetime) -> QrFinding | None:
        v = evaluate_stalled(s, store_code, now, self.cfg, self.chain_rate(s, now))
        if v.stalled:
            return self.open(s, store_code, "stalled", v.since or now,
                             {"adds": v.adds, "p": round(v.p, 3), "chance": v.chance,
                              "window_minutes": self.cfg.window_minutes})
        return None

    def open(self, s: Session, store_code: str, kind: str, since: datetime, evidence: dict) -> QrFinding | None:
        """A new finding, or None when the same one is already open (no second alert)."""
        now = self.clock.now()
        try:
            with s.begin_nested():
                f = QrFinding(store_code=store_code, kind=kind, open_key=f"{store_code}:{kind}", since=since,
                              evidence=evidence, opened_at=now)
                s.add(f)
                s.flush()
        except IntegrityError:
            return None
        log.warning("QR finding %s at %s: %s", kind, store_code, evidence)
        return f

    def resolve(self, s: Session, store_code: str, kinds: tuple[str, ...], note: str | None = None) -> list[QrFinding]:
        found = [f for f in open_findings(s, [store_code]) if f.kind in kinds]
        for f in found:
            f.open_key, f.resolved_at = None, self.clock.now()
            if note:
                f.repaired = note[:200]
        return found

    def on_joins(self, s: Session, joins: list[FunnelFact], now: datetime) -> None:
        """A QR join clears the store's stalled finding, with an all-clear to its clerks."""
        for store_code in {j.store_code for j in joins if j.kind == "join" and j.store_code}:
            cleared = self.resolve(s, store_code, ("stalled",))
            if cleared:
                alerts.notify(s, self.clock, cleared, resolved=True)
