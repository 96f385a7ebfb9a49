"""/metrics: Prometheus counters per route, artifact version and status, on the real server."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.gateway import GatewayProcess

MESSAGES = [
    {"role": "system", "content": "Oslo is the capital of Norway."},
    {"role": "user", "content": "Oslo?"},
]


@pytest.fixture(scope="module")
def gw(spine_gateway: GatewayProcess) -> GatewayProcess:
    return spine_gateway  # router `flaky`: deployment `bad` (fake 500), then `good` (fake ok)


def samples(gw: GatewayProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(gw.metrics())
        for s in family.samples
    }


def value(snapshot: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(
        v for (n, ls), v in snapshot.items() if n == name and all((k, labels[k]) in ls for k in labels)
    )


def test_request_counters_per_artifact_version(gw: GatewayProcess) -> None:
    with gw.http() as http:
        card = http.get("/v1/models/default", headers=gw.auth()).json()["opsgate"]
        before = samples(gw)
        for _ in range(3):
            assert (
                http.post(
                    "/v1/chat/completions", json={"model": "default", "messages": MESSAGES}, headers=gw.auth()
                ).status_code
                == 200
            )
        for _ in range(2):
            assert (
                http.post(
                    "/v1/chat/completions", json={"model": "nope", "messages": MESSAGES}, headers=gw.auth()
                ).status_code
                == 404
            )
        assert (
            http.post(
                "/v1/chat/completions", json={"model": "flaky", "messages": MESSAGES}, headers=gw.auth()
            ).status_code
            == 200
        )
    after = samples(gw)
    artifact = f"router:default@{card['version']}"
    route = "/v1/chat/completions"

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("opsgate_requests_total", route=route, artifact=artifact, status="200") == 3
    assert delta("opsgate_requests_total", route=route, status="404") == 2
    assert delta("opsgate_requests_total", route=route, artifact="router:flaky@1", status="200") == 1
    assert delta("opsgate_request_latency_seconds_count", route=route, artifact=artifact) == 3
    assert delta("opsgate_tokens_total", artifact=artifact, direction="in") > 0
    assert delta("opsgate_tokens_total", artifact=artifact, direction="out") > 0
    assert delta("opsgate_upstream_attempts_total", deployment="bad", outcome="error") == 1
    assert delta("opsgate_upstream_attempts_total", deployment="good", outcome="ok") == 1
    assert value(after, "opsgate_request_log_dropped") == 0


def test_metrics_are_prometheus_text(gw: GatewayProcess) -> None:
    with gw.http() as http:
        r = http.get("/metrics", headers=gw.auth())
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    names = {family.name for family in text_string_to_metric_families(r.text)}
    assert {"opsgate_requests", "opsgate_request_latency_seconds", "opsgate_request_log_dropped"} <= names
