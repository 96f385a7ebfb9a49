"""Prometheus metrics, on a registry owned by the app (no process-global collectors)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gateway.monitoring.requestlog import LogRow

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
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
        self.attempts = Counter(
            "opsgate_upstream_attempts",
            "Upstream attempts by deployment and outcome.",
            ["deployment", "outcome"],
            registry=r,
        )

    def gauge(self, name: str, doc: str, read: Callable[[], float]) -> None:
        Gauge(name, doc, registry=self.registry).set_function(read)

    def observe(self, row: LogRow) -> None:
        artifact = row.artifacts[0].split("#", 1)[0] if row.artifacts else (row.model or "-")
        self.requests.labels(row.route, artifact, str(row.status)).inc()
        self.latency.labels(row.route, artifact).observe(row.latency_ms / 1000)
        if row.upstream_ms is not None and row.deployment:
            self.upstream_latency.labels(row.deployment).observe(row.upstream_ms / 1000)
        if row.ttft_ms is not None:
            self.ttft.labels(artifact).observe(row.ttft_ms / 1000)
        if row.tokens_in:
            self.tokens.labels(artifact, "in").inc(row.tokens_in)
        if row.tokens_out:
            self.tokens.labels(artifact, "out").inc(row.tokens_out)
        if row.cost_usd:
            self.cost.labels(artifact).inc(row.cost_usd)
        for attempt in row.attempts:
            self.attempts.labels(attempt["deployment"], "ok" if attempt["ok"] else "error").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
