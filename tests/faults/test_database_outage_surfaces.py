"""A database outage on the surfaces added after issue 13 (a throwaway PostgreSQL, stopped by the test):
what needs no database is served; what reads or writes the traffic store answers 503 with Retry-After
and an OpenAI-style error (Anthropic's shape on /v1/messages), never a 500; an answer already made is
never thrown away because it could not be stored (plain or streamed, chat, completions, responses,
messages): the caller gets it, and its log row says it was not stored and why; every request has exactly
one log row once the database is back, and the gateway's log says so in a line per change of state."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import FAST_GATEWAY_YAML, GatewayProcess, deployment
from tests.fakes.services import ThrowawayPostgres
from tests.fakes.upstream import FakeUpstream
from tests.ui.test_dashboard import sign_in


@pytest.fixture(scope="module")
def project(project_factory: ProjectFactory, fake_upstream: FakeUpstream) -> Path:
    routers = {"echo": {"deployments": [deployment("e", fake_upstream.url("ok-outage-surfaces"))]}}
    return project_factory(routers=routers, files={"config/gateway.yaml": FAST_GATEWAY_YAML})


@pytest.fixture(scope="module")
def postgres() -> Iterator[ThrowawayPostgres]:
    pg = ThrowawayPostgres().init()
    yield pg
    pg.destroy()


def post(gw: GatewayProcess, path: str, body: dict[str, Any]) -> httpx.Response:
    with gw.http(timeout=30) as http:
        r = http.post(path, json=body, headers=gw.auth())
        r.read()
        return r


def get(gw: GatewayProcess, path: str) -> httpx.Response:
    with gw.http(timeout=30) as http:
        return http.get(path, headers=gw.auth())


def assert_unavailable(r: httpx.Response, *, anthropic: bool = False) -> None:
    assert r.status_code == 503, r.text
    assert int(r.headers["retry-after"]) >= 1
    if anthropic:
        assert r.json()["type"] == "error" and "database" in r.json()["error"]["message"], r.text
    else:
        assert r.json()["error"]["code"] == "database_unavailable", r.text


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "echo", "messages": [{"role": "user", "content": text}], **extra}


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.2)


def test_the_new_surfaces_through_a_database_outage(
    start_gateway: GatewayFactory, project: Path, postgres: ThrowawayPostgres
) -> None:
    gw = start_gateway(project, database_url=postgres.url)
    stored = post(gw, "/v1/responses", {"model": "echo", "input": "before the outage"})
    assert stored.status_code == 200
    conversation = post(gw, "/v1/conversations", {})
    assert conversation.status_code == 200
    answered: list[httpx.Response] = []
    refused: list[httpx.Response] = []
    dashboard = gw.http(timeout=30)
    assert sign_in(dashboard, gw.admin_key).status_code == 303
    postgres.stop()
    try:
        # the dashboard reads the database on every page: a 503 with Retry-After, never a 500
        for page in ("/ui/approvals", "/ui/operator", "/ui/alerts", "/ui/rollouts"):
            r = dashboard.get(page)
            assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1, (
                page,
                r.status_code,
                r.text[:300],
            )
        # served: the answer is the caller's even when it cannot be stored (the row says so)
        for path, body in [
            ("/v1/chat/completions", chat("plain, store", store=True)),
            ("/v1/chat/completions", chat("stream, store", store=True, stream=True)),
            ("/v1/completions", {"model": "echo", "prompt": "legacy", "store": True}),
            ("/v1/responses", {"model": "echo", "input": "plain response"}),
            ("/v1/responses", {"model": "echo", "input": "streamed response", "stream": True}),
            ("/v1/responses", {"model": "echo", "input": "not stored", "store": False}),
            (
                "/v1/messages",
                {"model": "echo", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]},
            ),
        ]:
            r = post(gw, path, body)
            assert r.status_code == 200, (path, r.text)
            if body.get("stream"):
                assert "echo:" in r.text and "error" not in r.text.split("\n\n")[-3], r.text[-600:]
            answered.append(r)
        # refused before any model is called: they need the database
        previous = {"model": "echo", "input": "go on", "previous_response_id": stored.json()["id"]}
        in_conversation = {"model": "echo", "input": "go on", "conversation": conversation.json()["id"]}
        for r in [
            post(gw, "/v1/responses", previous),
            post(gw, "/v1/responses", in_conversation),
            post(gw, "/v1/conversations", {}),
            get(gw, f"/v1/conversations/{conversation.json()['id']}/items"),
            get(gw, f"/v1/responses/{stored.json()['id']}"),
            get(gw, "/v1/chat/completions"),
        ]:
            assert_unavailable(r)
            refused.append(r)
        time.sleep(1)
    finally:
        postgres.start()
        dashboard.close()
    ids = [r.headers["x-opsgate-request-id"] for r in answered + refused]
    rows = wait_for(lambda: (found := gw.log_rows(ids, timeout=30)) and len(found) == len(ids) and found, 40,
                    "every row written")  # fmt: skip
    for rid in ids:
        assert gw.count_rows(rid) == 1
    for r in answered[:5]:
        row = rows[r.headers["x-opsgate-request-id"]]
        assert row["status"] == 200, row
        traffic = row["extra"]["traffic"]
        assert traffic["stored"] is False and traffic["reason"] == "database_unavailable", row["extra"]
    for r in refused:
        assert rows[r.headers["x-opsgate-request-id"]]["status"] == 503
    out = gw.output()
    assert "Traceback" not in out, out[-3000:]
    assert out.count("traffic store: database unavailable") == 1, out[-3000:]
    # once it is back, storing works again
    again = post(gw, "/v1/responses", {"model": "echo", "input": "after the outage"})
    assert again.status_code == 200
    assert get(gw, f"/v1/responses/{again.json()['id']}").status_code == 200
    row = gw.log_row(again.headers["x-opsgate-request-id"])
    assert row["extra"]["traffic"]["stored"] is True
    assert orjson.loads(orjson.dumps(row["extra"]))  # plain JSON
