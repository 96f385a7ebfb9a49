"""What judges a rollout: each metric read per arm, then tested (gateway/rollouts/stats.py).

    metric              read from                                        test            worse when
    error_rate          request log: 5xx share                           mSPRT rates     higher
    latency_ms          request log: mean latency                        mSPRT means     higher
    latency_p50|95|99   request log: share above the pooled percentile   mSPRT rates     higher
    cost_usd            request log: mean cost                           mSPRT means     higher
    accuracy            classic models: predictions with feedback,       mSPRT rates     lower
                        share whose label matches the true one
    abs_error           classic models (regression): |prediction - truth| mSPRT means    higher
    prediction_drift    classic models: mean score (or value) per row    mSPRT means     either way
    <eval metric>       online eval scores of the arm's requests         mSPRT means     lower

A percentile is tested as a rate, so that it is always-valid like the others: under equal arms, the
share of each arm's requests slower than the pooled p-th percentile is the same (1 - p); a candidate
whose tail is slower has more of its requests above it. The evidence adds each arm's percentile.

Arms are the request log rows tagged with the rollout (`extra.rollout`), since activation; a shadow
rollout's `shadow` rows are its candidate arm. Client errors (4xx) say nothing about the version and
are left out. The ML tables are read by name (`ml_predictions`, `ml_feedback`): this layer does not
import the ML package.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, String, column, select, table
from sqlalchemy.orm import Session

from gateway.db.models import OnlineEvalScore, RequestLog
from gateway.rollouts.stats import Arm, Direction, TestResult, msprt_means, msprt_rates

BUILTIN_METRICS: dict[str, Direction] = {
    "error_rate": "higher",
    "latency_ms": "higher",
    "latency_p50": "higher",
    "latency_p95": "higher",
    "latency_p99": "higher",
    "cost_usd": "higher",
    "accuracy": "lower",
    "abs_error": "higher",
    "prediction_drift": "either",
}
PERCENTILES = {"latency_p50": 0.50, "latency_p95": 0.95, "latency_p99": 0.99}
CHUNK = 500  # ids per IN (...): under every database's bound-parameter limit

_predictions = table(
    "ml_predictions",
    column("id", String),
    column("request_id", String),
    column("label", JSON),
    column("score", Float),
    column("value", Float),
)
_feedback = table("ml_feedback", column("prediction_id", String), column("label", JSON))


@dataclass(frozen=True)
class LogRow:
    id: str
    status: int
    latency_ms: float
    cost_usd: float | None
    source: str | None = None  # a shadow row: the live request it copied (whose feedback applies to it)

    @property
    def labelled_as(self) -> str:
        return self.source or self.id


Arms = dict[str, list[LogRow]]


@dataclass(frozen=True)
class Judged:
    """One metric's test, plus figures the test itself does not carry (a percentile's values)."""

    result: TestResult
    figures: dict[str, Any]

    def evidence(self, metric: str) -> dict[str, Any]:
        return self.result.as_evidence() | {"metric": metric} | self.figures


def read_arms(session: Session, rollout_id: str, since: datetime) -> Arms:
    """The log rows of each arm since `since`. Client errors (4xx) say nothing about the version."""
    arms: Arms = {"control": [], "candidate": []}
    q = select(
        RequestLog.id, RequestLog.status, RequestLog.latency_ms, RequestLog.cost_usd, RequestLog.extra
    ).where(RequestLog.ts >= since)
    for rid, status, latency, cost, extra in session.execute(q):
        tag = (extra or {}).get("rollout")
        if not isinstance(tag, dict) or tag.get("id") != rollout_id or 400 <= status < 500:
            continue
        arm = tag.get("arm")
        if arm == "shadow":  # a shadow rollout's candidate answers: judged like a canary's
            arm = "candidate"
        if arm in arms:
            source = (extra or {}).get("shadow_of")
            arms[arm].append(LogRow(rid, status, latency, cost, source if isinstance(source, str) else None))
    return arms


def judge(
    session: Session, metric: str, direction: Direction, arms: Arms, *, alpha: float, min_sample: int
) -> Judged:
    control, candidate = arms["control"], arms["candidate"]
    opts: dict[str, Any] = {"alpha": alpha, "direction": direction, "min_sample": min_sample}
    if metric == "error_rate":
        return Judged(msprt_rates(_errors(control), _errors(candidate), **opts), {})
    if metric in PERCENTILES:
        return _percentile(PERCENTILES[metric], _answered(control), _answered(candidate), opts)
    if metric == "latency_ms":
        return Judged(
            msprt_means(Arm.from_values(_answered(control)), Arm.from_values(_answered(candidate)), **opts),
            {},
        )
    if metric == "cost_usd":
        costs = [
            [float(r.cost_usd) for r in rows if r.status < 400 and r.cost_usd is not None]
            for rows in (control, candidate)
        ]
        return Judged(msprt_means(Arm.from_values(costs[0]), Arm.from_values(costs[1]), **opts), {})
    if metric in ("accuracy", "abs_error", "prediction_drift"):
        return _model_metric(session, metric, control, candidate, opts)
    # an online eval metric: the scores of the sampled requests of each arm
    return Judged(
        msprt_means(
            Arm.from_values(_scores(session, [r.id for r in control], metric)),
            Arm.from_values(_scores(session, [r.id for r in candidate], metric)),
            **opts,
        ),
        {},
    )


def _errors(rows: list[LogRow]) -> Arm:
    return Arm.from_counts(len(rows), sum(r.status >= 500 for r in rows))


def _answered(rows: list[LogRow]) -> list[float]:
    return [float(r.latency_ms) for r in rows if r.status < 400]


def quantile(values: list[float], q: float) -> float:
    """The q-th quantile by linear interpolation (numpy's default), of a non-empty list."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def _percentile(q: float, control: list[float], candidate: list[float], opts: dict[str, Any]) -> Judged:
    if not control or not candidate:
        return Judged(msprt_rates(Arm.from_values([]), Arm.from_values([]), **opts), {})
    threshold = quantile(control + candidate, q)

    def above(values: list[float]) -> Arm:
        return Arm.from_counts(len(values), sum(v > threshold for v in values))

    figures = {
        "percentile": q,
        "threshold_ms": round(threshold, 3),
        "value_control": round(quantile(control, q), 3),
        "value_candidate": round(quantile(candidate, q), 3),
    }
    return Judged(msprt_rates(above(control), above(candidate), **opts), figures)


def _scores(session: Session, ids: list[str], metric: str) -> list[float]:
    out: list[float] = []
    for start in range(0, len(ids), CHUNK):
        q = select(OnlineEvalScore.score).where(
            OnlineEvalScore.request_id.in_(ids[start : start + CHUNK]),
            OnlineEvalScore.metric == metric,
            OnlineEvalScore.score.is_not(None),
        )
        out.extend(float(v) for v in session.scalars(q) if v is not None)
    return out


def _predictions_of(session: Session, rows: list[LogRow]) -> list[tuple[str, Any, float | None]]:
    """(the prediction id feedback refers to, label, score or value) of the rows these requests scored.
    A shadow scoring's row i answers feedback given to the live request's row i."""
    labelled = {r.id: r.labelled_as for r in rows}
    ids = list(labelled)
    out: list[tuple[str, Any, float | None]] = []
    for start in range(0, len(ids), CHUNK):
        q = select(
            _predictions.c.request_id,
            _predictions.c.id,
            _predictions.c.label,
            _predictions.c.score,
            _predictions.c.value,
        ).where(_predictions.c.request_id.in_(ids[start : start + CHUNK]))
        for request_id, pid, label, score, value in session.execute(q):
            row = pid.rpartition(":")[2]
            out.append((f"{labelled[request_id]}:{row}", label, score if score is not None else value))
    return out


def _truth(session: Session, prediction_ids: list[str]) -> dict[str, Any]:
    """The latest feedback label of each prediction that has one."""
    found: dict[str, Any] = {}
    for start in range(0, len(prediction_ids), CHUNK):
        q = select(_feedback.c.prediction_id, _feedback.c.label).where(
            _feedback.c.prediction_id.in_(prediction_ids[start : start + CHUNK])
        )
        for pid, label in session.execute(q):
            found[pid] = label
    return found


def _model_metric(
    session: Session, metric: str, control: list[LogRow], candidate: list[LogRow], opts: dict[str, Any]
) -> Judged:
    arms = []
    for rows in (control, candidate):
        predictions = _predictions_of(session, [r for r in rows if r.status < 400])
        if metric == "prediction_drift":
            arms.append(Arm.from_values([float(s) for _, _, s in predictions if s is not None]))
            continue
        truth = _truth(session, [pid for pid, _, _ in predictions])
        labelled = [(label, num, truth[pid]) for pid, label, num in predictions if pid in truth]
        if metric == "accuracy":
            arms.append(Arm.from_counts(len(labelled), sum(str(lab) == str(t) for lab, _, t in labelled)))
        else:
            arms.append(
                Arm.from_values(
                    [abs(float(n) - float(t)) for _, n, t in labelled if n is not None and _number(t)]
                )
            )
    test = msprt_rates if metric == "accuracy" else msprt_means
    return Judged(test(arms[0], arms[1], **opts), {})


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
