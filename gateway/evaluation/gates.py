"""Gates decide a run: absolute thresholds, no regression against a baseline, the suite pass rate, the
per-case pass rate over repeats, and the share of calls that failed. Each gate gives a `GateResult`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.evaluation.runner import RunResult, ScoreTable, stat
from gateway.evaluation.spec import BaselineGate, CasePassRateGate, Gate, PassRateGate, ThresholdGate


@dataclass
class GateResult:
    name: str
    passed: bool
    detail: str
    value: float | None = None
    baseline: float | None = None
    skipped: bool = False
    spec: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def case_minimums(run: RunResult) -> dict[str, float]:
    mins: dict[str, float] = {}
    for gate in run.suite.spec.gates:
        if isinstance(gate, PassRateGate | CasePassRateGate):
            for key, value in gate.case.items():
                mins[key] = max(value, mins.get(key, value))
    return mins


def mark_cases(run: RunResult) -> None:
    """Each case result passes when its call succeeded and it meets every per-case minimum of the suite."""
    mins = case_minimums(run)
    for r in run.results:
        ok = r.output.error is None
        for key, minimum in mins.items():
            value = r.scores.get(key) if key in r.scores else _operational(r, key)
            ok = ok and value is not None and value >= minimum
        r.passed = ok


def _operational(r: Any, key: str) -> float | None:
    value = getattr(r.output, key, None)
    return None if value is None else float(value)


def _case_rates(run: RunResult, case: dict[str, float]) -> dict[str, float]:
    """case id -> share of its repeats that meet `case`."""
    hits: dict[str, list[bool]] = {}
    for r in run.results:
        ok = r.output.error is None and all(
            (v := (r.scores.get(k) if k in r.scores else _operational(r, k))) is not None and v >= m
            for k, m in case.items()
        )
        hits.setdefault(r.case.id, []).append(ok)
    return {cid: sum(v) / len(v) for cid, v in hits.items()}


def _values(run: RunResult | ScoreTable, key: str) -> list[float]:
    return (run.table() if isinstance(run, RunResult) else run).values(key)


def threshold(run: RunResult, gate: ThresholdGate) -> GateResult:
    value = stat(_values(run, gate.metric), gate.stat)
    bounds = " and ".join(
        b
        for b in (
            f">= {gate.min}" if gate.min is not None else "",
            f"<= {gate.max}" if gate.max is not None else "",
        )
        if b
    )
    name = f"{gate.metric} {gate.stat} {bounds}"
    if value is None:
        return GateResult(name, False, "no case produced a score", spec=gate.model_dump())
    ok = (gate.min is None or value >= gate.min) and (gate.max is None or value <= gate.max)
    return GateResult(name, ok, f"{gate.stat} = {value:.4f}", value, spec=gate.model_dump())


def lower_is_better(run: RunResult, gate: BaselineGate) -> bool:
    if gate.lower_is_better is not None:
        return gate.lower_is_better
    from gateway.evaluation.metrics import registry

    name = next((u.name for u in run.suite.spec.metrics if u.key == gate.metric), gate.metric)
    return registry().find(name).lower_is_better


def baseline_gate(run: RunResult, gate: BaselineGate, baseline: ScoreTable | None, label: str) -> GateResult:
    lower = lower_is_better(run, gate)
    sign = "-" if lower else ""
    unit = "relative" if gate.relative else "absolute"
    name = f"{gate.metric} {gate.stat} vs {label}: change >= {gate.delta:+g} ({unit}{', lower is better' if sign else ''})"
    if baseline is None:
        return GateResult(
            name,
            True,
            f"skipped: {label} has no version to compare with",
            skipped=True,
            spec=gate.model_dump(),
        )
    value = stat(_values(run, gate.metric), gate.stat)
    base = stat(_values(baseline, gate.metric), gate.stat)
    if value is None or base is None:
        return GateResult(name, False, "no scores to compare", value, base, spec=gate.model_dump())
    change = (base - value) if lower else (value - base)
    if gate.relative:
        change = change / abs(base) if base else (0.0 if change == 0 else float("inf") * change)
    ok = change >= gate.delta
    detail = f"candidate {value:.4f}, baseline {base:.4f} ({baseline.label}), change {change:+.4f}"
    return GateResult(name, ok, detail, value, base, spec=gate.model_dump())


def pass_rate(run: RunResult, gate: PassRateGate) -> GateResult:
    rates = _case_rates(run, gate.case)
    passing = sum(1 for r in rates.values() if r >= gate.repeats_min)
    value = passing / len(rates) if rates else 0.0
    name = f"pass rate >= {gate.min} (case: {_case_text(gate.case)})"
    return GateResult(
        name,
        value >= gate.min,
        f"{passing}/{len(rates)} cases pass ({value:.1%})",
        value,
        spec=gate.model_dump(),
    )


def case_pass_rate(run: RunResult, gate: CasePassRateGate) -> GateResult:
    rates = _case_rates(run, gate.case)
    flaky = sorted(cid for cid, r in rates.items() if r < gate.min)
    worst = min(rates.values(), default=0.0)
    name = f"every case passes >= {gate.min:.0%} of its repeats (case: {_case_text(gate.case)})"
    detail = (
        "all cases"
        if not flaky
        else f"{len(flaky)} below: {', '.join(flaky[:5])}{' ...' if len(flaky) > 5 else ''}"
    )
    return GateResult(name, not flaky, detail, worst, spec=gate.model_dump())


def errors_gate(run: RunResult) -> GateResult:
    total = len(run.results)
    rate = run.errors / total if total else 1.0
    limit = run.suite.spec.max_error_rate
    name = f"failed calls <= {limit:.0%}"
    return GateResult(name, rate <= limit, f"{run.errors}/{total} calls failed", rate)


def _case_text(case: dict[str, float]) -> str:
    return ", ".join(f"{k} >= {v:g}" for k, v in case.items())


def evaluate_gates(
    run: RunResult, baselines: dict[str, ScoreTable | None], *, with_baseline: bool = True
) -> list[GateResult]:
    """`baselines` maps each baseline selector (production, 3, ...) to its run, or None when it has none."""
    mark_cases(run)
    out = [errors_gate(run)]
    for gate in run.suite.spec.gates:
        out.append(_one(run, gate, baselines, with_baseline))
    return [g for g in out if g is not None]


def _one(
    run: RunResult, gate: Gate, baselines: dict[str, ScoreTable | None], with_baseline: bool
) -> GateResult:
    if isinstance(gate, ThresholdGate):
        return threshold(run, gate)
    if isinstance(gate, BaselineGate):
        if not with_baseline:
            return GateResult(
                f"{gate.metric} vs {gate.min_delta_vs}", True, "not checked on a baseline run", skipped=True
            )
        return baseline_gate(run, gate, baselines.get(gate.min_delta_vs), gate.min_delta_vs)
    if isinstance(gate, PassRateGate):
        return pass_rate(run, gate)
    return case_pass_rate(run, gate)
