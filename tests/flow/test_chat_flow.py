"""The chat path in its order (resolve, authorise, prepare, call, finish) through the real gateway:
nothing is retrieved for a request that is refused, a rule scoped to an index screens the query sent to
it, a deployment that breaks off mid-stream cools down, an upstream's bad usage is its fault, and every
outcome writes exactly one log row."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import FAST_GATEWAY_YAML, GatewayProcess, assert_error, deployment
from tests.fakes.upstream import FakeUpstream, Hit, chat_answer, echo_text
from tests.policy.conftest import make_key

POLICY = """\
rules:
  - name: index-denied
    match: {principals: [index-denied]}
    checks:
      - {type: access, indexes: [public-*]}
  - name: rag-rpm
    match: {principals: [rag-rpm]}
    checks:
      - {type: rate_limit, rpm: 1}
  - name: kb-query-pii
    match: {indexes: [kb], principals: [kb-screened]}
    checks:
      - {type: pii, mode: block}
"""
KBQA = """\
name: kbqa
router: echo
retrieval: {index: kb, top_k: 2, mode: dense}
messages:
  - role: system
    content: |
      Answer from this context.
      {% for c in context %}[{{ c.id }}] {{ c.text }}
      {% endfor %}
"""
KB_INDEX = """\
name: kb
source: {type: files, paths: ["kb/*.md"]}
embedder: {type: router, router: vectors}
"""
KB_FILES = {
    "kb/billing.md": "# Billing\nBilling questions go to the billing team.\n",
    "kb/shipping.md": "# Shipping\nOrders ship within two days.\n",
}
EMAIL = "jane.doe.canary@example.org"


async def mode_badusage(hit: Hit) -> web.StreamResponse | None:
    """`flowbadusage`: a chat answer whose usage holds text where token counts belong."""
    data = chat_answer(hit.body, echo_text(hit.body))
    data["usage"] = {"prompt_tokens": "many", "completion_tokens": 3, "total_tokens": "many"}
    return web.json_response(data)


async def mode_vectors(hit: Hit) -> web.StreamResponse | None:
    """`flowvec`: the default answers, under a mode of its own so retrieval calls can be counted."""
    return None


@pytest.fixture(scope="module")
def upstream(fake_upstream: FakeUpstream) -> FakeUpstream:
    fake_upstream.add_mode("flowbadusage", mode_badusage)
    fake_upstream.add_mode("flowvec", mode_vectors)
    return fake_upstream


@pytest.fixture(scope="module")
def gw(
    upstream: FakeUpstream, project_factory: ProjectFactory, gateway_factory: GatewayFactory
) -> Iterator[GatewayProcess]:
    routers: dict[str, Any] = {
        "echo": {"deployments": [deployment("up", upstream.url("ok"))]},
        "vectors": {"kind": "embedding", "deployments": [deployment("up", upstream.url("flowvec"))]},
        "badusage": {"deployments": [deployment("up", upstream.url("flowbadusage"))]},
        "cutter": {
            "cooldown_s": 60,
            "deployments": [
                deployment("cuts", upstream.url("cut-1")),
                deployment("steady", upstream.url("ok")),
            ],
        },
    }
    files = {
        "config/gateway.yaml": FAST_GATEWAY_YAML,
        "config/policies.yaml": POLICY,
        "prompts/kbqa.yaml": KBQA,
        "config/indexes/kb.yaml": KB_INDEX,
        **KB_FILES,
    }
    with gateway_factory(project_factory(routers, files=files)) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def keys(gw: GatewayProcess) -> dict[str, str]:
    return {p: make_key(gw, p) for p in ("index-denied", "rag-rpm", "kb-screened")}


def ask(gw: GatewayProcess, key: str, model: str, text: str, **extra: Any) -> httpx.Response:
    with gw.http() as http:
        return http.post(
            "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": text}], **extra},
            headers=gw.auth(key),
        )


def test_a_request_refused_by_access_never_retrieves(
    gw: GatewayProcess, upstream: FakeUpstream, keys: dict[str, str]
) -> None:
    before = upstream.count("flowvec")
    r = ask(gw, keys["index-denied"], "kbqa", "how do orders ship?")
    row = assert_error(gw, r, 403, type_="permission_error", code="policy_access_denied", param="model")
    assert "index:kb" in r.json()["error"]["message"]
    assert upstream.count("flowvec") == before  # no query embedding was asked for
    assert "retrieval" not in row["extra"]
    assert [a.split("@")[0] for a in row["artifacts"]] == ["prompt:kbqa", "router:echo", "index:kb"]


def test_a_request_over_its_rate_limit_never_retrieves(
    gw: GatewayProcess, upstream: FakeUpstream, keys: dict[str, str]
) -> None:
    first = ask(gw, keys["rag-rpm"], "kbqa", "how do orders ship?")
    assert first.status_code == 200
    assert gw.log_row(first.headers["x-opsgate-request-id"])["extra"]["retrieval"]["index"].startswith(
        "index:kb@1#"
    )
    before = upstream.count("flowvec")
    second = ask(gw, keys["rag-rpm"], "kbqa", "how do orders ship?")
    row = assert_error(gw, second, 429, type_="rate_limit_error", code="rate_limit_exceeded", param=None)
    assert upstream.count("flowvec") == before
    assert "retrieval" not in row["extra"]


def test_a_rule_scoped_to_an_index_screens_the_query_sent_to_it(
    gw: GatewayProcess, upstream: FakeUpstream, keys: dict[str, str]
) -> None:
    before = len(upstream.hits("flowvec"))
    r = ask(gw, keys["kb-screened"], "kbqa", f"my address is {EMAIL}, where is my order?")
    row = assert_error(gw, r, 400, type_="invalid_request_error", code="pii_detected", param="messages")
    (decision,) = [d for d in row["decisions"] if d["check"] == "pii"]
    assert (decision["stage"], decision["verdict"], decision["rule"]) == ("query", "blocked", "kb-query-pii")
    assert all(EMAIL not in orjson.dumps(h["json"]).decode() for h in upstream.hits("flowvec")[before:])
    # the same key on a router the rule does not scope: not screened
    assert ask(gw, keys["kb-screened"], "echo", f"my address is {EMAIL}").status_code == 200


def test_a_deployment_that_breaks_off_mid_stream_cools_down(
    gw: GatewayProcess, upstream: FakeUpstream
) -> None:
    request_ids = []
    for _ in range(4):
        with (
            gw.http() as http,
            http.stream(
                "POST",
                "/v1/chat/completions",
                json={"model": "cutter", "messages": [{"role": "user", "content": "a b c"}], "stream": True},
                headers=gw.auth(),
            ) as r,
        ):
            body = b"".join(r.iter_bytes())
            request_ids.append(r.headers["x-opsgate-request-id"])
        if len(request_ids) == 1:  # the cut stream ends with an error, not a clean end
            assert b'"finish_reason":"error"' in body and b"[DONE]" not in body
    rows = [gw.log_row(rid) for rid in request_ids]
    assert rows[0]["status"] == 502 and rows[0]["attempts"][0] == {**rows[0]["attempts"][0], "ok": False}
    assert rows[0]["attempts"][0]["deployment"] == "cuts"
    for row in rows[1:]:  # the cutting deployment is cooling down: the others go to the steady one
        assert row["status"] == 200 and row["deployment"] == "steady", row["attempts"]


def test_usage_that_is_not_a_token_count_is_the_upstreams_fault(gw: GatewayProcess) -> None:
    r = ask(gw, gw.admin_key, "badusage", "hello")
    row = assert_error(gw, r, 502, type_="upstream_error", code="invalid_upstream_usage", param=None)
    assert "usage.prompt_tokens = 'many'" in r.json()["error"]["message"]
    assert row["deployment"] == "up"


@pytest.mark.parametrize(
    ("options", "param", "code"),
    [
        ({"include_context": "yes"}, "opsgate.include_context", "invalid_type"),
        ({"nope": 1}, "opsgate.nope", "unknown_parameter"),
    ],
)
def test_bad_gateway_options_are_refused_with_one_log_row(
    gw: GatewayProcess, options: dict[str, Any], param: str, code: str
) -> None:
    body = {"model": "echo", "messages": [{"role": "user", "content": "x"}], "opsgate": options}
    status = 400
    with gw.http() as http:
        r = http.post("/v1/chat/completions", json=body, headers=gw.auth())
    row = assert_error(gw, r, status, type_="invalid_request_error", code=code, param=param)
    assert row["route"] == "/v1/chat/completions"


def test_a_body_that_would_steer_the_upstream_is_refused_before_retrieval(
    gw: GatewayProcess, upstream: FakeUpstream, keys: dict[str, str]
) -> None:
    before = upstream.count("flowvec")
    r = ask(gw, gw.admin_key, "kbqa", "how do orders ship?", api_base="http://127.0.0.1:9/v1")
    assert_error(gw, r, 400, type_="invalid_request_error", code="forbidden_parameter", param="api_base")
    assert upstream.count("flowvec") == before
