from datetime import datetime, timedelta, timezone

from bot.config import QrHealthSettings
from bot.funnel.stalled import expected_conversion, stalled_verdict

T0 = datetime(2026, 11, 23, 1, tzinfo=timezone.utc)
CFG = QrHealthSettings()


def adds(n):
    return [T0 + timedelta(minutes=i) for i in range(n)]


def test_min_adds_bounds_the_rule_from_below():
    assert not stalled_verdict(adds(7), 0.9, CFG).stalled
    assert stalled_verdict(adds(8), 0.9, CFG).stalled


def test_a_low_converting_store_needs_a_longer_run():
    cfg = QrHealthSettings(alpha=0.01)
    assert not stalled_verdict(adds(12), 0.3, cfg).stalled      # 0.7^12 = 0.014
    assert stalled_verdict(adds(13), 0.3, cfg).stalled          # 0.7^13 = 0.0097


def test_a_busy_store_gets_a_correction_for_its_many_looks():
    quiet, busy = stalled_verdict(adds(9), 0.6, CFG, adds_per_day=2), stalled_verdict(adds(9), 0.6, CFG, adds_per_day=200)
    assert quiet.stalled and not busy.stalled and busy.looks == 120
    assert not stalled_verdict(adds(12), 0.6, CFG, adds_per_day=200).stalled   # 120 × 0.4^12 = 0.002
    assert stalled_verdict(adds(13), 0.6, CFG, adds_per_day=200).stalled       # 120 × 0.4^13 = 0.0008


def test_expected_conversion_shrinks_toward_the_chain_and_keeps_the_floor():
    assert expected_conversion(0, 0, None, 0.2) == 0.6                   # no history: the default prior
    assert round(expected_conversion(20, 20, 0.6, 0.2), 2) == 0.76      # 20/20 shrunk by 30 prior adds
    assert expected_conversion(500, 10, 0.6, 0.2) == 0.2                 # a QR that never worked: the floor
