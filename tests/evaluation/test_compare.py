"""Compare: paired bootstrap intervals of per-metric deltas, and the cases that changed most."""

from __future__ import annotations

import numpy as np

from gateway.evaluation.compare import compare_tables
from gateway.evaluation.runner import ScoreRow, ScoreTable


def table(run_id: str, values: list[float]) -> ScoreTable:
    return ScoreTable(
        run_id,
        "prompt:qa@1",
        [ScoreRow(f"c{i}", 0, {"f1": v}, latency_ms=10.0) for i, v in enumerate(values)],
    )


def test_identical_runs_have_a_zero_interval() -> None:
    values = list(np.random.default_rng(1).random(50))
    result = compare_tables(table("a", values), table("b", values))
    f1 = result.metrics[0]
    assert (f1.delta, f1.ci_low, f1.ci_high, f1.paired, f1.significant) == (0.0, 0.0, 0.0, 50, False)
    assert result.changed == []


def test_a_real_improvement_is_significant_and_the_interval_holds_the_delta() -> None:
    rng = np.random.default_rng(2)
    a = list(rng.random(60) * 0.5)
    b = [v + 0.2 + rng.normal(0, 0.05) for v in a]
    result = compare_tables(table("a", a), table("b", b))
    f1 = result.metrics[0]
    assert f1.ci_low is not None and f1.ci_high is not None and f1.delta is not None
    assert 0.18 < f1.delta < 0.22 and f1.ci_low < f1.delta < f1.ci_high and f1.significant
    again = compare_tables(table("a", a), table("b", b)).metrics[0]
    assert (again.ci_low, again.ci_high) == (f1.ci_low, f1.ci_high)  # seeded
    top = result.changed[0]
    assert abs(top.delta) == max(abs(y - x) for x, y in zip(a, b, strict=True))


def test_noise_is_not_significant() -> None:
    rng = np.random.default_rng(3)
    a = list(rng.random(40))
    b = [v + rng.normal(0, 0.05) for v in a]
    assert not compare_tables(table("a", a), table("b", b)).metrics[0].significant
