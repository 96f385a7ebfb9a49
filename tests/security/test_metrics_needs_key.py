"""Issue 11, finding 13: /metrics needed no key and showed what others called. Now it needs a key with the
`metrics` role (or admin) unless the operator sets `metrics.require_key: false`; a metrics key reads
/metrics and nothing else.
"""

from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import FAST_GATEWAY_YAML, GatewayProcess

MESSAGES = [{"role": "user", "content": "hello?"}]
LOCAL = {"deployments": [{"id": "local", "model": "local/extractive"}]}


def new_key(gw: GatewayProcess, role: str) -> str:
    out = gw.cli("keys", "create", "--name", f"{role}-key", "--role", role, key=gw.admin_key).stdout
    key: str = out.strip().splitlines()[-1]
    if role != "metrics":  # (a metrics key gets 403 on /v1/models: wait on /metrics instead)
        gw.wait_for_key(key)
    return key


def test_metrics_need_a_metrics_or_admin_key(
    make_project: ProjectFactory, start_gateway: GatewayFactory
) -> None:
    gw = start_gateway(make_project(routers={"known": LOCAL}))
    app_key = new_key(gw, "app")
    scraper = new_key(gw, "metrics")
    with gw.http() as http:
        anonymous = http.get("/metrics")
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["code"] == "invalid_api_key"
        assert "opsgate_requests" not in anonymous.text
        assert http.get("/metrics", headers={"Authorization": "Bearer sk-og-made-up"}).status_code == 401
        assert http.get("/metrics", headers=gw.auth(app_key)).status_code == 403
        deadline = time.monotonic() + 15  # the new key reaches the gateway's key cache (its refresh interval)
        while True:
            scraped = http.get("/metrics", headers=gw.auth(scraper))
            if scraped.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert scraped.status_code == 200
        assert {f.name for f in text_string_to_metric_families(scraped.text)} >= {"opsgate_requests"}
        assert http.get("/metrics", headers=gw.auth()).status_code == 200  # admin
        # the scraper's key reads /metrics only
        chat = http.post(
            "/v1/chat/completions", json={"model": "known", "messages": MESSAGES}, headers=gw.auth(scraper)
        )
        assert chat.status_code == 403, chat.text
        assert http.get("/v1/models", headers=gw.auth(scraper)).status_code == 403


def test_operator_may_open_metrics(make_project: ProjectFactory, start_gateway: GatewayFactory) -> None:
    yaml = FAST_GATEWAY_YAML + "metrics:\n  require_key: false\n"
    gw = start_gateway(make_project(routers={"known": LOCAL}, files={"config/gateway.yaml": yaml}))
    with gw.http() as http:
        assert http.get("/metrics").status_code == 200
