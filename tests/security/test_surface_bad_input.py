"""Attacks on the newer surfaces (Responses, Messages, completions) with bad input: each is a 4xx naming
the field, with exactly one log row, and no request holds the event loop.

On the code before these fixes, on PostgreSQL:
- a 20-digit integer (`max_output_tokens` on /v1/responses, `max_tokens` on /v1/messages) was a 500 (the
  upstream body could not be serialised), and on chat and completions it was sent upstream as `1e+20`;
- a model name with a NUL character was answered 404, but its log row was refused by PostgreSQL and
  dropped: a caller could make requests that leave no trace in the request log;
- `/v1/messages/count_tokens` on 4 MB of text, a chat answer from an upstream that reports no usage, or
  the input of a request under token limits (token_cap, rate_limit tpm, budget) was counted on the event
  loop: /healthz waited 4 to 10 s.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import GatewayProcess, assert_error, deployment
from tests.fakes.upstream import FakeUpstream

pytestmark = pytest.mark.postgres
MESSAGES = [{"role": "user", "content": "hello"}]
BIG = 100000000000000000000  # 10**20: more than 64 bits
# token limits for app keys (config/policies.yaml's commented example): each counts the input's tokens
POLICIES = """\
rules:
  - name: apps
    match: {roles: [app]}
    checks:
      - {type: pii, mode: redact}
      - {type: token_cap, max_input_tokens: 100000000}
      - {type: rate_limit, rpm: 6000, tpm: 100000000}
      - {type: access, routers: [up, nousage, vectors]}
"""


@pytest.fixture(scope="module")
def gw(
    project_factory: ProjectFactory,
    gateway_factory: GatewayFactory,
    fake_upstream: FakeUpstream,
    new_pg_database: Callable[[], str],
) -> Iterator[GatewayProcess]:
    routers = {
        "up": {"deployments": [deployment("up", fake_upstream.url("ok-badin"), adapter="openai")]},
        "nousage": {"deployments": [deployment("nu", fake_upstream.url("nousage-badin"), adapter="openai")]},
        "vectors": {"kind": "embedding", "deployments": [deployment("v", fake_upstream.url("ok-badin"))]},
        "secret": {"deployments": [deployment("s", fake_upstream.url("ok-badin"), adapter="openai")]},
    }
    project = project_factory(routers=routers, files={"config/policies.yaml": POLICIES})
    with gateway_factory(project, database_url=new_pg_database()) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def app_key(gw: GatewayProcess) -> str:
    made = gw.cli("keys", "create", "--name", "app", "--role", "app", key=gw.admin_key)
    key = made.stdout.strip().splitlines()[-1]
    gw.wait_for_key(key)
    return key


def post(
    gw: GatewayProcess, path: str, body: dict[str, Any], key: str, timeout: float = 30
) -> httpx.Response:
    """The body as a client sends it (10**20 as a JSON integer; orjson would refuse to write it)."""
    with gw.http(timeout=timeout) as http:
        content = json.dumps(body).encode()
        return http.post(path, content=content, headers={**gw.auth(key), "content-type": "application/json"})


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/responses", {"model": "up", "input": "hi", "max_output_tokens": BIG}, "max_output_tokens"),
        ("/v1/messages", {"model": "up", "max_tokens": BIG, "messages": MESSAGES}, "max_tokens"),
        ("/v1/chat/completions", {"model": "up", "messages": MESSAGES, "max_tokens": BIG}, "max_tokens"),
        ("/v1/chat/completions", {"model": "up", "messages": MESSAGES, "seed": -BIG}, "seed"),
        ("/v1/completions", {"model": "up", "prompt": "hi", "max_tokens": BIG}, "max_tokens"),
        ("/v1/embeddings", {"model": "vectors", "input": "hi", "dimensions": BIG}, "dimensions"),
    ],
)
def test_integers_beyond_64_bits_are_400_naming_the_field(
    gw: GatewayProcess, app_key: str, fake_upstream: FakeUpstream, path: str, body: dict[str, Any], param: str
) -> None:
    before = len(fake_upstream.requests)
    r = post(gw, path, body, app_key)
    if path == "/v1/messages":  # Anthropic's error shape
        assert r.status_code == 400, r.text
        assert param in r.json()["error"]["message"]
        assert gw.log_row(r.headers["x-opsgate-request-id"])["status"] == 400
        assert gw.count_rows(r.headers["x-opsgate-request-id"]) == 1
    else:
        assert_error(gw, r, 400, type_="invalid_request_error", code="invalid_type", param=param)
    assert "2^63" in r.text
    assert len(fake_upstream.requests) == before


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/responses", {"model": "up\u0000x", "input": "hi"}),
        ("/v1/messages", {"model": "up\u0000x", "max_tokens": 5, "messages": MESSAGES}),
        ("/v1/chat/completions", {"model": "up\u0000x", "messages": MESSAGES}),
        ("/v1/completions", {"model": "up\u0000x", "prompt": "hi"}),
        ("/v1/embeddings", {"model": "vectors\u0000x", "input": "hi"}),
        ("/v1/messages/count_tokens", {"model": "up\u0000x", "messages": MESSAGES}),
    ],
)
def test_a_nul_in_a_model_name_still_writes_its_log_row(
    gw: GatewayProcess, app_key: str, path: str, body: dict[str, Any]
) -> None:
    r = post(gw, path, body, app_key)
    assert r.status_code == 404, r.text
    row = gw.log_row(r.headers["x-opsgate-request-id"])
    assert gw.count_rows(r.headers["x-opsgate-request-id"]) == 1
    assert row["status"] == 404 and row["model"].endswith("\\x00x")  # escaped: PostgreSQL text holds no NUL


def _worst_healthz_during(
    gw: GatewayProcess, work: Callable[[], httpx.Response]
) -> tuple[httpx.Response, float]:
    worst = [0.0]
    stop = threading.Event()

    def poll() -> None:
        with gw.http(timeout=60) as http:
            while not stop.is_set():
                started = time.perf_counter()
                http.get("/healthz")
                worst[0] = max(worst[0], time.perf_counter() - started)
                time.sleep(0.02)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        time.sleep(0.1)
        r = work()
        gw.log_row(r.headers["x-opsgate-request-id"], timeout=60)  # a stream is counted after its end
        time.sleep(0.1)
        return r, worst[0]
    finally:
        stop.set()
        poller.join()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/messages/count_tokens",
            {"model": "up", "messages": [{"role": "user", "content": "a" * 3_900_000}]},
        ),
        (
            "/v1/chat/completions",
            {"model": "nousage", "messages": [{"role": "user", "content": "a" * 3_900_000}]},
        ),
        (
            "/v1/chat/completions",
            {"model": "nousage", "stream": True, "messages": [{"role": "user", "content": "a" * 3_900_000}]},
        ),
        ("/v1/chat/completions", {"model": "up", "messages": [{"role": "user", "content": "a" * 3_900_000}]}),
    ],
    ids=["count_tokens", "chat-no-usage", "stream-no-usage", "token-limits"],
)
def test_counting_tokens_of_a_4mb_input_holds_no_event_loop(
    gw: GatewayProcess, app_key: str, path: str, body: dict[str, Any]
) -> None:
    """One `aaaa...` string is tiktoken's slowest input (seconds for 4 MB): it is counted off the loop."""
    r, worst = _worst_healthz_during(gw, lambda: post(gw, path, body, app_key, timeout=120))
    assert r.status_code == 200, r.text[:300]
    assert worst < 1.0, f"/healthz waited {worst:.2f} s"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/chat/completions?model=up%00", None),
        ("GET", "/v1/chat/completions?after=chatcmpl-x%00", None),
        ("GET", "/v1/chat/completions/chatcmpl-%00", None),
        ("GET", "/v1/chat/completions/chatcmpl-%00/messages", None),
        ("POST", "/v1/chat/completions/chatcmpl-%00", {"metadata": {"a": "b"}}),
        ("DELETE", "/v1/chat/completions/chatcmpl-%00", None),
        ("GET", "/v1/responses/resp_%00", None),
        ("DELETE", "/v1/responses/resp_%00", None),
        ("GET", "/v1/responses/resp_%00/input_items", None),
        ("POST", "/v1/responses", {"model": "up", "input": "hi", "previous_response_id": "resp_\u0000"}),
        ("POST", "/v1/responses", {"model": "up", "input": "hi", "conversation": "conv_\u0000"}),
        ("GET", "/v1/conversations/conv_%00", None),
        ("POST", "/v1/conversations/conv_%00", {"metadata": {"a": "b"}}),
        ("DELETE", "/v1/conversations/conv_%00", None),
        ("GET", "/v1/conversations/conv_%00/items", None),
        (
            "POST",
            "/v1/conversations/conv_%00/items",
            {"items": [{"type": "message", "role": "user", "content": "x"}]},
        ),
    ],
)
def test_a_nul_in_a_stored_id_or_filter_is_not_found(
    gw: GatewayProcess, app_key: str, method: str, path: str, body: dict[str, Any] | None
) -> None:
    """PostgreSQL refuses NUL in text: the traffic store never sends one (no stored id holds it)."""
    with gw.http() as http:
        content = json.dumps(body).encode() if body is not None else None
        r = http.request(
            method, path, content=content, headers={**gw.auth(app_key), "content-type": "application/json"}
        )
    if "?" in path:  # a filter that matches nothing: an empty page
        assert r.status_code == 200 and r.json()["data"] == [], r.text
    else:
        assert r.status_code == 404, r.text
    assert gw.log_row(r.headers["x-opsgate-request-id"])["status"] == r.status_code
    assert gw.count_rows(r.headers["x-opsgate-request-id"]) == 1


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


DEEP = _nested(300)  # within the JSON parser's 1,024 levels, beyond the 254 orjson can write back
FN = {"type": "function", "function": {"name": "f"}}


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"model": "up", "messages": MESSAGES, "tools": [{**FN, "function": {"name": "f", "parameters": DEEP}}]}, "tools"),
        ("/v1/chat/completions", {"model": "up", "messages": [{"role": "user", "content": "hi", "x": DEEP}]}, "messages"),
        ("/v1/chat/completions", {"model": "up", "messages": MESSAGES, "store": True, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": DEEP}}}, "response_format"),
        ("/v1/responses", {"model": "up", "input": "hi", "tools": [{"type": "function", "name": "f", "parameters": DEEP}]}, "tools"),
        ("/v1/responses", {"model": "up", "input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}, {"type": "function_call_output", "call_id": "c", "output": DEEP}]}, "input"),
        ("/v1/messages", {"model": "up", "max_tokens": 5, "messages": MESSAGES, "tools": [{"name": "f", "input_schema": DEEP}]}, "tools"),
        ("/v1/messages", {"model": "up", "max_tokens": 5, "messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": DEEP}]}, {"role": "user", "content": "x"}]}, "messages"),
        ("/v1/completions", {"model": "up", "prompt": "x", "prompt_variables": {"x": DEEP}}, "prompt_variables"),
        ("/v1/conversations", {"items": [{"type": "message", "role": "user", "content": "x", "y": DEEP}]}, "items"),
    ],
)  # fmt: skip
def test_a_body_nested_deeper_than_it_could_be_sent_is_400_naming_the_field(
    gw: GatewayProcess, app_key: str, fake_upstream: FakeUpstream, path: str, body: dict[str, Any], param: str
) -> None:
    before = len(fake_upstream.requests)
    r = post(gw, path, body, app_key)
    if path == "/v1/messages":
        assert r.status_code == 400 and f"{param}: JSON nested deeper than 128 levels" in r.text, r.text
        assert gw.log_row(r.headers["x-opsgate-request-id"])["status"] == 400
    else:
        assert_error(gw, r, 400, type_="invalid_request_error", code="too_deep", param=param)
    assert len(fake_upstream.requests) == before


def test_count_tokens_applies_the_policy_access_rules_of_the_call_it_counts(
    gw: GatewayProcess, app_key: str
) -> None:
    """An app key the policy keeps off a router got 403 on chat but 200 on count_tokens for it."""
    body = {"model": "secret", "messages": MESSAGES}
    assert post(gw, "/v1/chat/completions", body, app_key).status_code == 403
    r = post(gw, "/v1/messages/count_tokens", body, app_key)
    assert r.status_code == 403, r.text
    assert r.json()["error"]["type"] == "permission_error"
    assert gw.log_row(r.headers["x-opsgate-request-id"])["status"] == 403
    assert (
        post(gw, "/v1/messages/count_tokens", {"model": "up", "messages": MESSAGES}, app_key).status_code
        == 200
    )


ITEM = {"type": "message", "role": "user", "content": "x"}


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"model": "up", "messages": [{"role": "user", "content": "x"}] * 70_000}, "messages"),
        ("/v1/responses", {"model": "up", "input": [ITEM] * 70_000}, "input"),
        ("/v1/messages", {"model": "up", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}] * 70_000}, "messages"),
    ],
)  # fmt: skip
def test_a_list_of_70000_messages_or_items_is_400_before_any_work(
    gw: GatewayProcess, app_key: str, fake_upstream: FakeUpstream, path: str, body: dict[str, Any], param: str
) -> None:
    """Each item is validated, screened, converted and stored on the request path: 70,000 Responses input
    items held /healthz for 3 s. At most limits.requests.max_items (10,000) per list."""
    before = len(fake_upstream.requests)
    r, worst = _worst_healthz_during(gw, lambda: post(gw, path, body, app_key))
    if path == "/v1/messages":
        assert r.status_code == 400 and f"{param} holds 70000 items" in r.text, r.text
    else:
        assert_error(gw, r, 400, type_="invalid_request_error", code="too_many_items", param=param)
    assert worst < 1.0, f"/healthz waited {worst:.2f} s"
    assert len(fake_upstream.requests) == before
