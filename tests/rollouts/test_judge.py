"""The judging metrics that need no database: latency percentiles tested as rates, and the two-sided
direction of prediction drift."""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from gateway.rollouts.judge import LogRow, judge, quantile
from gateway.rollouts.stats import Arm, msprt_means


def _arms(control: list[float], candidate: list[float]) -> dict[str, list[LogRow]]:
    return {
        "control": [LogRow(f"c{i}", 200, v, None) for i, v in enumerate(control)],
        "candidate": [LogRow(f"k{i}", 200, v, None) for i, v in enumerate(candidate)],
    }


def _p95(arms: dict[str, list[LogRow]]) -> Any:
    return judge(None, "latency_p95", "higher", arms, alpha=0.05, min_sample=30)  # type: ignore[arg-type]


def test_quantile_matches_numpy() -> None:
    values = [random.Random(1).lognormvariate(3, 1) for _ in range(101)]
    for q in (0.0, 0.5, 0.95, 0.99, 1.0):
        assert abs(quantile(values, q) - float(np.quantile(values, q))) < 1e-9


def test_a_slower_tail_is_worse_at_p95_though_the_median_is_equal() -> None:
    rng = random.Random(7)
    control = [rng.uniform(10, 20) for _ in range(2000)]
    # the same body, but one request in ten takes 200 ms more
    candidate = [rng.uniform(10, 20) + (200 if rng.random() < 0.1 else 0) for _ in range(2000)]
    judged = _p95(_arms(control, candidate))
    assert judged.result.verdict == "worse" and judged.result.test == "msprt_rates"
    assert judged.figures["value_candidate"] > 200 and judged.figures["value_control"] < 20
    median = judge(None, "latency_p50", "higher", _arms(control, candidate), alpha=0.05, min_sample=30)  # type: ignore[arg-type]
    assert median.result.verdict != "better"


def test_equal_arms_are_rarely_found_different_at_p95() -> None:
    rng = random.Random(11)
    worse = 0
    for _ in range(200):
        control = [rng.expovariate(1 / 50) for _ in range(300)]
        candidate = [rng.expovariate(1 / 50) for _ in range(300)]
        worse += _p95(_arms(control, candidate)).result.verdict == "worse"
    assert worse <= 10  # at most alpha (5 %) of 200, with room for chance


def test_too_few_requests_is_insufficient() -> None:
    assert _p95(_arms([10.0] * 5, [500.0] * 5)).result.verdict == "insufficient"
    assert _p95(_arms([], [])).result.verdict == "insufficient"


def test_either_direction_calls_any_significant_shift_worse() -> None:
    control = Arm.from_values([0.2 + 0.01 * (i % 5) for i in range(200)])
    for shift in (-0.1, 0.1):
        candidate = Arm.from_values([0.2 + shift + 0.01 * (i % 5) for i in range(200)])
        assert msprt_means(control, candidate, direction="either").verdict == "worse"
    assert msprt_means(control, control, direction="either").verdict == "inconclusive"
