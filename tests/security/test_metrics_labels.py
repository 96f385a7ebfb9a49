"""Issue 11, finding 7: model names a caller chose became Prometheus labels. 100 requests with distinct
1 MB model names made /metrics gigabytes long, and a `\\r` in a name broke the page. Now labels carry only
names the registry knows; anything else counts under `unknown`, and every label value is clean.
"""

from __future__ import annotations

import secrets

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import GatewayFactory, ProjectFactory

MESSAGES = [{"role": "user", "content": "hello?"}]
LOCAL = {"deployments": [{"id": "local", "model": "local/extractive"}]}


def test_unknown_model_names_never_become_labels(
    make_project: ProjectFactory, start_gateway: GatewayFactory
) -> None:
    gw = start_gateway(make_project(routers={"known": LOCAL}))
    invented = [secrets.token_hex(8) + "x" * 200_000 for _ in range(40)]
    broken = ["evil\rname", "evil\nname", 'evil"name} 1\nfake_metric 9', "known@" + "y" * 50_000]
    with gw.http() as http:
        for name in invented + broken:
            for route, body in (
                ("/v1/chat/completions", {"model": name, "messages": MESSAGES}),
                ("/v1/embeddings", {"model": name, "input": "hi"}),
            ):
                r = http.post(route, json=body, headers=gw.auth())
                assert 400 <= r.status_code < 500, r.text[:300]
        ok = http.post(
            "/v1/chat/completions", json={"model": "known", "messages": MESSAGES}, headers=gw.auth()
        )
        assert ok.status_code == 200
        r = http.get("/metrics", headers=gw.auth())
    assert r.status_code == 200
    page = r.text
    assert len(page) < 100_000, f"/metrics is {len(page)} characters long"
    assert "\r" not in page and "evil" not in page and "fake_metric" not in page and "xxxxxxxx" not in page

    artifacts: dict[str, float] = {}
    for family in text_string_to_metric_families(page):  # the page parses
        for sample in family.samples:
            if sample.name == "opsgate_requests_total":
                key = sample.labels["artifact"]
                artifacts[key] = artifacts.get(key, 0) + sample.value
    assert artifacts.get("unknown", 0) >= 2 * (len(invented) + len(broken)) - 2
    assert any(a.startswith("router:known@") for a in artifacts)
    assert set(artifacts) <= {"unknown", "-"} | {a for a in artifacts if a.startswith("router:known")}
