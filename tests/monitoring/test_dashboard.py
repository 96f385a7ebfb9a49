"""The Grafana dashboard in deploy/grafana/opsgate.json, and the per-version metrics it charts: every
metric it queries is on a real gateway's /metrics (read with a key) after some traffic."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.gateway import GatewayProcess, deployment
from tests.fakes.upstream import FakeUpstream

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "opsgate.json"
MESSAGES = [{"role": "user", "content": "Oslo is the capital of Norway. Oslo?"}]


def expressions(dashboard: dict) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]] + [
        v["definition"] for v in dashboard["templating"]["list"] if "definition" in v
    ]


@pytest.fixture(scope="module")
def gw(project_factory: Any, gateway_factory: Any, fake_upstream: FakeUpstream) -> Iterator[GatewayProcess]:
    price = {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}
    routers = {
        "flaky": {
            "deployments": [
                deployment("bad", fake_upstream.url("500-dash"), **price),
                deployment("good", fake_upstream.url("ok-dash"), **price),
            ]
        }
    }
    with gateway_factory(project_factory(routers=routers)) as gateway:
        yield gateway


def test_dashboard_metrics_exist_on_a_real_gateway(gw: GatewayProcess) -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["panels"] and all(p["targets"] for p in dashboard["panels"])
    client = gw.client()
    client.chat.completions.create(model="flaky", messages=MESSAGES)  # `bad` 500, then `good`: a fallback
    assert list(client.chat.completions.create(model="flaky", messages=MESSAGES, stream=True))
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=MESSAGES)
    with gw.http() as http:
        assert http.get("/metrics").status_code == 401  # the page needs a key
    page = gw.metrics()
    families = list(text_string_to_metric_families(page))
    # a series the traffic made, or a metric the page declares with no series yet (no priced model, no
    # policy decision in this project): both are names Prometheus will find
    declared = set(re.findall(r"^# TYPE (\S+) ", page, re.MULTILINE))
    samples = {s.name for f in families for s in f.samples} | declared
    used = {m for e in expressions(dashboard) for m in re.findall(r"\bopsgate_[a-z_]+", e)}
    assert len(used) >= 10
    missing = sorted(m for m in used if m not in samples)
    assert not missing, f"the dashboard queries metrics /metrics does not have: {missing}"

    series = [s for f in text_string_to_metric_families(page) for s in f.samples]
    assert any(
        s.name == "opsgate_errors_total"
        and s.labels == {"route": "/v1/chat/completions", "artifact": "unknown", "type": "model_not_found"}
        for s in series
    ), [s for s in series if s.name == "opsgate_errors_total"]
    fallbacks = [s for s in series if s.name == "opsgate_fallbacks_total"]
    assert fallbacks and all(s.labels["artifact"].startswith("router:flaky@") for s in fallbacks)
    assert any(
        s.name == "opsgate_artifact_upstream_latency_seconds_count"
        and s.labels["artifact"].startswith("router:flaky@")
        for s in series
    )
