"""`opsgate eval compare RUN_A RUN_B`: per metric, the change from A to B with a bootstrap confidence
interval, and the cases that changed most.

Cases are paired by id (each case's score is its mean over repeats), so the interval is that of the mean
per-case difference: resample the cases with replacement, B times, and take the percentiles. When the two
runs share no case, the runs are resampled independently (unpaired). Seeded: the same runs give the same
interval.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.evaluation.runner import ScoreTable

RESAMPLES = 5000
SEED = 20261128


@dataclass(frozen=True)
class MetricDelta:
    metric: str
    mean_a: float | None
    mean_b: float | None
    delta: float | None
    ci_low: float | None
    ci_high: float | None
    paired: int  # cases present in both

    @property
    def significant(self) -> bool:
        return self.ci_low is not None and self.ci_high is not None and (self.ci_low > 0 or self.ci_high < 0)


@dataclass(frozen=True)
class CaseChange:
    case_id: str
    metric: str
    a: float
    b: float

    @property
    def delta(self) -> float:
        return self.b - self.a


@dataclass
class Comparison:
    a: str
    b: str
    confidence: float
    metrics: list[MetricDelta] = field(default_factory=list)
    changed: list[CaseChange] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "confidence": self.confidence,
            "metrics": [{**m.__dict__, "significant": m.significant} for m in self.metrics],
            "changed": [{**c.__dict__, "delta": c.delta} for c in self.changed],
        }


def bootstrap_ci(
    a: np.ndarray[Any, Any], b: np.ndarray[Any, Any], *, paired: bool, confidence: float, seed: int = SEED
) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    tail = (1 - confidence) / 2 * 100
    if paired:
        diff = b - a
        samples = diff[rng.integers(0, len(diff), size=(RESAMPLES, len(diff)))].mean(axis=1)
    else:
        sa = a[rng.integers(0, len(a), size=(RESAMPLES, len(a)))].mean(axis=1)
        sb = b[rng.integers(0, len(b), size=(RESAMPLES, len(b)))].mean(axis=1)
        samples = sb - sa
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def compare_tables(a: ScoreTable, b: ScoreTable, *, confidence: float = 0.95, top: int = 10) -> Comparison:
    out = Comparison(a.run_id, b.run_id, confidence)
    keys = [k for k in a.metric_keys() if k in set(b.metric_keys())] + ["latency_ms", "cost_usd"]
    changes: list[CaseChange] = []
    for key in dict.fromkeys(keys):
        ca, cb = a.by_case(key), b.by_case(key)
        if not ca or not cb:
            out.metrics.append(MetricDelta(key, _mean(ca), _mean(cb), None, None, None, 0))
            continue
        common = sorted(set(ca) & set(cb))
        if common:
            va = np.array([ca[c] for c in common])
            vb = np.array([cb[c] for c in common])
        else:
            va, vb = np.array(list(ca.values())), np.array(list(cb.values()))
        low, high = bootstrap_ci(va, vb, paired=bool(common), confidence=confidence)
        mean_a, mean_b = float(va.mean()), float(vb.mean())
        out.metrics.append(MetricDelta(key, mean_a, mean_b, mean_b - mean_a, low, high, len(common)))
        if key not in ("latency_ms", "cost_usd"):
            changes.extend(CaseChange(c, key, ca[c], cb[c]) for c in common if ca[c] != cb[c])
    out.changed = sorted(changes, key=lambda c: -abs(c.delta))[:top]
    return out


def _mean(values: dict[str, float]) -> float | None:
    return sum(values.values()) / len(values) if values else None
