"""Gates: thresholds, baseline regression (absolute and relative), pass rates over repeats, failed calls."""

from __future__ import annotations

import pytest

from gateway.evaluation.gates import evaluate_gates
from gateway.evaluation.runner import ScoreRow, ScoreTable
from tests.evaluation.helpers import run


def table(values: list[float], label: str = "prompt:qa@1") -> ScoreTable:
    return ScoreTable(
        "run_base", label, [ScoreRow(f"c{i}", 0, {"hit_at_4": v}) for i, v in enumerate(values)]
    )


def outcome(
    gates: list[dict[str, object]], scores: dict[str, list[list[float | None]]], **kw: object
) -> dict[str, bool]:
    baselines = kw.pop("baselines", {})
    result = evaluate_gates(run(scores, gates=gates, **kw), baselines)  # type: ignore[arg-type]
    return {g.name: g.passed for g in result}


def test_threshold_gates_pass_and_fail_on_the_chosen_statistic() -> None:
    scores = {"exact_match": [[1.0], [0.0], [1.0], [1.0]], "hit_at_4": [[1.0]] * 4}
    got = outcome([{"metric": "exact_match", "min": 0.7}, {"metric": "exact_match", "min": 0.8},
                   {"metric": "exact_match", "stat": "min", "min": 0.5}, {"metric": "latency_ms", "max": 12.5}], scores)  # fmt: skip
    assert got == {
        "failed calls <= 0%": True,
        "exact_match mean >= 0.7": True,
        "exact_match mean >= 0.8": False,
        "exact_match min >= 0.5": False,
        "latency_ms mean <= 12.5": True,  # latencies 10, 11, 12, 13 ms
    }


def test_baseline_gate_catches_a_regression_and_allows_the_tolerance() -> None:
    scores = {"exact_match": [[1.0]] * 4, "hit_at_4": [[1.0], [1.0], [0.0], [1.0]]}  # 0.75
    gate = {"metric": "hit_at_4", "min_delta_vs": "production", "delta": -0.02}
    name = "hit_at_4 mean vs production: change >= -0.02 (absolute)"
    assert outcome([gate], scores, baselines={"production": table([1, 1, 1, 1])})[name] is False
    assert outcome([gate], scores, baselines={"production": table([1, 1, 0, 1])})[name] is True
    loose = {**gate, "delta": -0.3, "relative": True}  # 25% drop allowed under 30%
    assert outcome([loose], scores, baselines={"production": table([1, 1, 1, 1])})[
        "hit_at_4 mean vs production: change >= -0.3 (relative)"
    ]


def test_baseline_gate_detail_and_skip_when_there_is_no_baseline() -> None:
    scores = {"exact_match": [[1.0]] * 2, "hit_at_4": [[0.0], [1.0]]}
    result = evaluate_gates(
        run(scores, gates=[{"metric": "hit_at_4", "min_delta_vs": "production"}]), {"production": None}
    )
    assert result[1].skipped and result[1].passed and "has no version" in result[1].detail
    result = evaluate_gates(
        run(scores, gates=[{"metric": "hit_at_4", "min_delta_vs": "production"}]),
        {"production": table([1, 1])},
    )
    assert not result[1].passed
    assert result[1].detail == "candidate 0.5000, baseline 1.0000 (prompt:qa@1), change -0.5000"


def test_pass_rate_over_repeats_and_flaky_cases() -> None:
    # 3 cases x 3 repeats: c0 always passes, c1 passes 2 of 3, c2 never
    scores = {"exact_match": [[1.0, 1.0, 1.0], [1.0, 0.0, 1.0], [0.0, 0.0, 0.0]], "hit_at_4": [[1.0] * 3] * 3}
    suite_rate = {"type": "pass_rate", "min": 0.6, "case": {"exact_match": 1}, "repeats_min": 0.6}
    strict = {**suite_rate, "repeats_min": 1.0}
    flaky = {"type": "case_pass_rate", "min": 0.6, "case": {"exact_match": 1}}
    result = evaluate_gates(run(scores, gates=[suite_rate, strict, flaky], repeats=3), {})
    assert [g.passed for g in result] == [True, True, False, False]
    assert result[1].detail == "2/3 cases pass (66.7%)" and result[2].detail == "1/3 cases pass (33.3%)"
    assert result[3].detail == "1 below: c2"


def test_failed_calls_fail_the_run_unless_allowed() -> None:
    scores = {"exact_match": [[1.0], [1.0], [1.0], [1.0]], "hit_at_4": [[1.0]] * 4}
    result = evaluate_gates(run(scores, errors={("c1", 0)}), {})
    assert not result[0].passed and result[0].detail == "1/4 calls failed"
    result = evaluate_gates(run(scores, errors={("c1", 0)}, max_error_rate=0.25), {})
    assert result[0].passed


@pytest.mark.parametrize("bad", [{"metric": "nope", "min": 1}, {"metric": "exact_match"}])
def test_gate_mistakes_are_refused(bad: dict[str, object]) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        run({"exact_match": [[1.0]], "hit_at_4": [[1.0]]}, gates=[bad])


def test_latency_regression_is_judged_lower_is_better() -> None:
    scores = {"exact_match": [[1.0]] * 2, "hit_at_4": [[1.0]] * 2}  # latencies 10 and 11 ms: mean 10.5
    faster = ScoreTable(
        "b", "prompt:qa@1", [ScoreRow("c0", 0, {}, latency_ms=5.0), ScoreRow("c1", 0, {}, latency_ms=5.0)]
    )
    gate = {"metric": "latency_ms", "min_delta_vs": "production", "delta": -1.0}
    [_, result] = evaluate_gates(run(scores, gates=[gate]), {"production": faster})
    assert not result.passed and "lower is better" in result.name and result.detail.endswith("change -5.5000")
    [_, result] = evaluate_gates(run(scores, gates=[{**gate, "delta": -6.0}]), {"production": faster})
    assert result.passed
