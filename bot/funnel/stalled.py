"""The stalled rule, alone and pure (the benchmark runs the same code): is a run of adds that
produced no join too unlikely for a healthy QR?

With the store's expected add→join conversion p, n adds since the last join (inside the window)
that produced no join have probability (1-p)^n; flag when that is below alpha (corrected for how
often the rule is looked at) and n ≥ min_adds. p is the store's own rate before the window, shrunk
toward the chain-wide rate (a Beta prior worth PRIOR_WEIGHT adds), never below min_rate: a store
whose QR never worked is still flagged, by the prior and the floor.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from bot.config import QrHealthSettings

PRIOR_WEIGHT = 30          # the chain-wide rate counts as this many adds of the store's own
DEFAULT_CHAIN_RATE = 0.6   # before the chain has history
BASELINE = timedelta(days=7)


def expected_conversion(store_adds: int, store_converted: int, chain_rate: float | None,
                        floor: float) -> float:
    prior = chain_rate if chain_rate is not None else DEFAULT_CHAIN_RATE
    p = (store_converted + PRIOR_WEIGHT * prior) / (store_adds + PRIOR_WEIGHT)
    return max(floor, min(p, 0.99))


@dataclass(frozen=True)
class StalledVerdict:
    stalled: bool
    adds: int                 # adds since the last join, inside the window
    p: float
    chance: float             # (1-p)^adds: how likely a healthy QR shows this run
    since: datetime | None    # the first of those adds
    looks: float = 1.0        # runs a healthy day starts (adds/day × p): chances to see one by luck


def stalled_verdict(add_times: list[datetime], p: float, cfg: QrHealthSettings,
                    adds_per_day: float = 0.0) -> StalledVerdict:
    """add_times: the store's adds after its last QR join and inside the window, oldest first.

    The rule is looked at on every add, so a healthy store meets a long run of non-joins by chance
    more often than (1-p)^n says: it starts about adds_per_day × p fresh runs a day. Flag when the
    expected number of such runs a healthy day would show, looks × (1-p)^n, is below alpha: alpha
    is then the chance that a healthy store is flagged on a given day."""
    n = len(add_times)
    chance = (1 - p) ** n
    looks = max(1.0, adds_per_day * p)
    return StalledVerdict(n >= cfg.min_adds and looks * chance < cfg.alpha, n, p, chance,
                          add_times[0] if add_times else None, looks)
