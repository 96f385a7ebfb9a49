"""Prometheus metrics, on a registry owned by the app (no process-global collectors).

Label values only ever carry names the gateway chose or the registry knows: routes, registered artifact
versions, deployments, policy checks, model columns. A name a caller sent that the registry does not know
(a 404 model, a column a model does not have) counts under the one value `unknown`, so callers cannot
grow the page (one series per name they invent) or break it (a `\\r` in a name). Every value is also
cleaned of control characters and capped in length, whatever its source.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gateway.monitoring.requestlog import LogRow

UNKNOWN = "unknown"
MAX_LABEL_CHARS = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")

POLICY_VERDICTS_COUNTED = frozenset({"blocked", "redacted", "flagged", "error"})
MAX_ERROR_TYPES = (
    50  # error codes are the gateway's, but an upstream's may pass through: a cap keeps it bounded
)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self, known_name: Callable[[str], str | None] | None = None) -> None:
        # model name as a caller sent it -> its registered name ("router:default"), or None when unknown
        self.known_name: Callable[[str], str | None] = known_name or (lambda _: None)
        self.registry = CollectorRegistry(auto_describe=True)
        # (metric, label values) -> child: prometheus' labels() validates and locks on every call
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        r = self.registry
        self.requests = Counter(
            "opsgate_requests",
            "Requests answered, by route, artifact version and status.",
            ["route", "artifact", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "opsgate_request_latency_seconds",
            "Whole-request latency.",
            ["route", "artifact"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_latency = Histogram(
            "opsgate_upstream_latency_seconds",
            "Time spent in the upstream call.",
            ["deployment"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "opsgate_time_to_first_token_seconds",
            "Streams: time to the first chunk.",
            ["artifact"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "opsgate_tokens", "Tokens, by direction.", ["artifact", "direction"], registry=r
        )
        self.cost = Counter("opsgate_cost_usd", "Cost in USD (litellm cost map).", ["artifact"], registry=r)
        self.artifact_upstream_latency = Histogram(
            "opsgate_artifact_upstream_latency_seconds",
            "Time spent in the upstream call (all attempts), by artifact version.",
            ["artifact"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "opsgate_errors",
            f"Failed requests by artifact version and error type (at most {MAX_ERROR_TYPES} types, then other).",
            ["route", "artifact", "type"],
            registry=r,
        )
        self.fallbacks = Counter(
            "opsgate_fallbacks",
            "Requests answered (or failed) after trying more than one deployment.",
            ["artifact"],
            registry=r,
        )
        self._error_types: set[str] = set()
        self.attempts = Counter(
            "opsgate_upstream_attempts",
            "Upstream attempts by deployment and outcome.",
            ["deployment", "outcome"],
            registry=r,
        )

        # Classic ML models: the same `artifact` label (model:name@version) as every other request.
        self.ml_rows = Counter("opsgate_ml_rows", "Rows scored by classic models.", ["artifact"], registry=r)
        self.ml_violations = Counter(
            "opsgate_ml_violations",
            "Data-quality violations by field and rule (rejected or flagged).",
            ["artifact", "field", "rule"],
            registry=r,
        )
        self.ml_drift_share = Gauge(
            "opsgate_ml_drift_share", "Share of input columns drifted (last check).", ["artifact"], registry=r
        )
        self.ml_dataset_drift = Gauge(
            "opsgate_ml_dataset_drift", "1 when the last check found dataset drift.", ["artifact"], registry=r
        )
        self.ml_quality = Gauge(
            "opsgate_ml_performance",
            "Accuracy, F1, AUC (or MAE, RMSE, R2) from feedback (last check).",
            ["artifact", "metric"],
            registry=r,
        )
        self.ml_fairness = Gauge(
            "opsgate_ml_fairness",
            "Disparate impact and parity / opportunity differences (last check).",
            ["artifact", "attribute", "metric"],
            registry=r,
        )
        self.policy_decisions = Counter(
            "opsgate_policy_decisions",
            "Policy checks that blocked, redacted, flagged or failed (store error), by check and verdict.",
            ["check", "verdict"],
            registry=r,
        )

    def observe_ml_rows(self, artifact: str, rows: int) -> None:
        self.ml_rows.labels(artifact).inc(rows)

    def observe_ml_violations(self, artifact: str, violations: Iterable[tuple[str, str]]) -> None:
        for field, rule in violations:  # a column the model does not have is the caller's name: unknown
            self._child(
                self.ml_violations, artifact, UNKNOWN if rule == "unknown_field" else field, rule
            ).inc()

    def observe_ml_figures(self, artifact: str, figures: dict[str, Any]) -> None:
        drift = figures.get("drift", {})
        if drift.get("status") == "ok":
            self.ml_drift_share.labels(artifact).set(drift["share"])
            self.ml_dataset_drift.labels(artifact).set(1 if drift["dataset_drift"] else 0)
        accuracy = figures.get("accuracy", {})
        for name, window in accuracy.get("windows", {}).items():
            if name.startswith("last_"):
                for metric, value in window.items():
                    if metric != "n" and isinstance(value, int | float):
                        self.ml_quality.labels(artifact, metric).set(value)
        fairness = figures.get("fairness", {})
        for attr, found in fairness.get("attributes", {}).items():
            for metric in (
                "disparate_impact",
                "demographic_parity_difference",
                "equal_opportunity_difference",
            ):
                if found.get(metric) is not None:
                    self.ml_fairness.labels(artifact, attr, metric).set(found[metric])

    def gauge(self, name: str, doc: str, read: Callable[[], float]) -> None:
        Gauge(name, doc, registry=self.registry).set_function(read)

    def _child(self, metric: Any, *values: str) -> Any:
        child = self._children.get((metric, values))
        if child is None:
            child = self._children[(metric, values)] = metric.labels(*map(label_value, values))
        return child

    def artifact_label(self, row: LogRow) -> str:
        """The artifact version that answered, or the registered name asked for, or `unknown`."""
        if row.artifacts:
            return row.artifacts[0].split("#", 1)[0]
        if row.model:
            return self.known_name(row.model) or UNKNOWN
        return "-"

    def observe(self, row: LogRow) -> None:
        artifact = self.artifact_label(row)
        labels = self._child
        labels(self.requests, row.route, artifact, str(row.status)).inc()
        labels(self.latency, row.route, artifact).observe(row.latency_ms / 1000)
        if row.upstream_ms is not None and row.deployment:
            labels(self.upstream_latency, row.deployment).observe(row.upstream_ms / 1000)
            labels(self.artifact_upstream_latency, artifact).observe(row.upstream_ms / 1000)
        if row.error_type:
            labels(self.errors, row.route, artifact, self._error_type(row.error_type)).inc()
        if len({a["deployment"] for a in row.attempts}) > 1:
            labels(self.fallbacks, artifact).inc()
        if row.ttft_ms is not None:
            labels(self.ttft, artifact).observe(row.ttft_ms / 1000)
        if row.tokens_in:
            labels(self.tokens, artifact, "in").inc(row.tokens_in)
        if row.tokens_out:
            labels(self.tokens, artifact, "out").inc(row.tokens_out)
        if row.cost_usd:
            labels(self.cost, artifact).inc(row.cost_usd)
        for attempt in row.attempts:
            labels(self.attempts, attempt["deployment"], "ok" if attempt["ok"] else "error").inc()
        for decision in row.decisions:
            verdict = decision.get("verdict")
            if verdict in POLICY_VERDICTS_COUNTED:
                labels(self.policy_decisions, str(decision.get("check", "-")), verdict).inc()

    def _error_type(self, error_type: str) -> str:
        if error_type not in self._error_types:
            if len(self._error_types) >= MAX_ERROR_TYPES:
                return "other"
            self._error_types.add(error_type)
        return error_type

    def render(self) -> bytes:
        return generate_latest(self.registry)


def label_value(value: str) -> str:
    """A label value safe on the page whatever it holds: no control characters, at most 200 characters
    (prometheus_client escapes backslash, quote and newline; a carriage return it leaves as is)."""
    value = _CONTROL.sub("?", str(value))
    return value if len(value) <= MAX_LABEL_CHARS else value[: MAX_LABEL_CHARS - 3] + "..."
