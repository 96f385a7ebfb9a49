"""Known cases for the rollout decision statistics (gateway/rollouts/stats.py)."""

import math
import random

import pytest
from scipy import stats as sps

from gateway.rollouts.stats import (
    Arm,
    msprt_log_lr,
    msprt_means,
    msprt_rates,
    two_proportions,
    welch_means,
)


def test_arm_summaries_agree() -> None:
    values = [1.0, 2.0, 4.0, 7.0]
    a = Arm.from_values(values)
    b = Arm.from_sums(4, sum(values), sum(v * v for v in values))
    assert a.n == b.n == 4
    assert a.mean == pytest.approx(3.5) and b.mean == pytest.approx(3.5)
    assert a.var == pytest.approx(7.0) and b.var == pytest.approx(7.0)
    r = Arm.from_counts(10, 3)
    assert (r.n, r.mean, r.var) == (10, 0.3, pytest.approx(0.21))


def test_welch_matches_scipy() -> None:
    x = [3.1, 2.9, 3.4, 3.0, 3.3, 2.8, 3.2]
    y = [2.5, 2.7, 2.4, 2.9, 2.6, 2.2]
    res = welch_means(Arm.from_values(x), Arm.from_values(y), alpha=0.05, direction="lower")
    ref = sps.ttest_ind(y, x, equal_var=False)
    assert res.statistic == pytest.approx(ref.statistic)
    assert res.p_value == pytest.approx(ref.pvalue)
    assert res.verdict == "worse"


def test_two_proportions_known_value() -> None:
    # 10/100 vs 20/100: pooled p=0.15, se=sqrt(.15*.85*.02)=0.050498, z=1.98030, p=0.04767
    res = two_proportions(Arm.from_counts(100, 10), Arm.from_counts(100, 20), alpha=0.05)
    assert res.statistic == pytest.approx(1.98030, abs=1e-4)
    assert res.p_value == pytest.approx(0.04767, abs=1e-4)
    assert res.verdict == "worse"  # higher error rate is worse
    better = two_proportions(Arm.from_counts(100, 20), Arm.from_counts(100, 10), alpha=0.05)
    assert better.verdict == "better"


def test_msprt_log_lr_closed_form() -> None:
    # d=0 gives the pure penalty 0.5*log(V/(V+tau2)); d^2 large grows the ratio.
    assert msprt_log_lr(0.0, 1.0, 1.0) == pytest.approx(0.5 * math.log(0.5))
    assert msprt_log_lr(2.0, 1.0, 1.0) == pytest.approx(0.5 * math.log(0.5) + 4 * 1 / (2 * 1 * 2))


def test_msprt_insufficient_below_min_sample() -> None:
    res = msprt_means(Arm(10, 1.0, 1.0), Arm(10, 0.0, 1.0), min_sample=30)
    assert res.verdict == "insufficient" and res.p_value == 1.0


def test_msprt_detects_clear_regression_and_improvement() -> None:
    control = Arm(400, 0.80, 0.04)
    worse = msprt_means(control, Arm(400, 0.70, 0.04), alpha=0.05, direction="lower")
    assert worse.verdict == "worse" and worse.statistic >= 20
    better = msprt_means(control, Arm(400, 0.90, 0.04), alpha=0.05, direction="lower")
    assert better.verdict == "better"
    rates = msprt_rates(Arm.from_counts(500, 10), Arm.from_counts(500, 60), alpha=0.05)
    assert rates.verdict == "worse"
    assert rates.as_evidence()["n_candidate"] == 500


def test_msprt_is_more_conservative_than_fixed_horizon_at_one_look() -> None:
    # A difference just significant for Welch at one look is not enough for the always-valid bound.
    control, candidate = Arm(200, 0.0, 1.0), Arm(200, -0.21, 1.0)
    assert welch_means(control, candidate).verdict == "worse"
    assert msprt_means(control, candidate).verdict == "inconclusive"


def test_msprt_false_alarm_rate_under_peeking_is_bounded() -> None:
    """Equal arms checked after every batch: the sequential test crosses in at most ~alpha of runs,
    while naive peeking with Welch crosses far more often."""
    rng = random.Random(7)
    runs, looks, batch, alpha = 200, 40, 10, 0.05
    msprt_alarms = welch_alarms = 0
    for _ in range(runs):
        a: list[float] = []
        b: list[float] = []
        m_hit = w_hit = False
        for _ in range(looks):
            a.extend(rng.gauss(0, 1) for _ in range(batch))
            b.extend(rng.gauss(0, 1) for _ in range(batch))
            ca, cb = Arm.from_values(a), Arm.from_values(b)
            m_hit = m_hit or msprt_means(ca, cb, alpha=alpha).verdict in ("worse", "better")
            w_hit = w_hit or welch_means(ca, cb, alpha=alpha).verdict in ("worse", "better")
        msprt_alarms += m_hit
        welch_alarms += w_hit
    assert msprt_alarms / runs <= alpha + 0.03
    assert welch_alarms / runs > 2 * alpha


def test_bad_alpha_rejected() -> None:
    with pytest.raises(ValueError):
        msprt_means(Arm(50, 0, 1), Arm(50, 0, 1), alpha=0)
