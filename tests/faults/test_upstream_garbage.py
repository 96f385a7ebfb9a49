"""An upstream that answers HTTP 200 with something that is not an answer is the upstream's fault, on every
surface that calls a model (chat, completions, responses bridged and native, messages, embeddings), plain
or streamed: a 502 in the surface's own error shape naming the deployment (never a 500), exactly one log
row and one request metric with that status, and the attempt logged failed (so the router falls back and
the deployment moves toward cooldown, as for a 5xx).

Faults: an error body with status 200; `choices` that are not a list of choice objects; a message that is
not an object; tool call arguments that are not a string; a usage with text for counts; stream chunks
whose choices (or their index) are not choices; a native Responses answer whose output is not a list of
items, or whose text is not a string; an embeddings answer without embeddings. A streamed usage with text
for counts is counted by the gateway instead (the answer itself arrived whole).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import FAST_GATEWAY_YAML, GatewayProcess, deployment
from tests.fakes.upstream import UPSTREAM_MODEL, FakeUpstream, Hit, chat_answer, echo_text, json_response
from tests.fakes.upstream import responses_answer as native_answer
from tests.monitoring.test_requestlog import metric

ERROR_200 = {"error": {"message": "quota exceeded for this project", "type": "insufficient_quota"}}


def _chat_junk(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    data = chat_answer(body, echo_text(body))
    if kind == "error200":
        return ERROR_200
    if kind == "choicesnum":
        data["choices"] = 5
    elif kind == "choicestr":
        data["choices"] = ["not a choice"]
    elif kind == "messagestr":
        data["choices"][0]["message"] = "not a message"
    elif kind == "usagetext":
        data["usage"] = {"prompt_tokens": "many", "completion_tokens": 3, "total_tokens": "many"}
    elif kind == "argsdict":
        data["choices"][0]["message"] = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}
            ],
        }
        data["choices"][0]["finish_reason"] = "tool_calls"
    return data


async def mode_junk(hit: Hit) -> web.StreamResponse | None:
    """`junk-<kind>`: a plain answer (status 200) of the given kind of garbage; streams: see below."""
    kind = hit.args[0]
    if hit.endpoint == "embeddings":
        return json_response(
            ERROR_200 if kind == "error200" else {"object": "list", "data": ["not an embedding"]}
        )
    if hit.endpoint == "responses":
        data = native_answer(hit.body)
        if kind == "error200":
            return json_response(ERROR_200)
        if kind == "outputnum":
            data["output"] = 5
        elif kind == "textnum":
            data["output"][1]["content"][0]["text"] = 5
        return json_response(data)
    if not hit.stream:
        return json_response(_chat_junk(kind, hit.body))
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(hit.request)
    meta = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": UPSTREAM_MODEL}
    chunks: list[Any] = [
        {**meta, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hello"}}]},
    ]
    if kind == "chunkstr":
        chunks.append({**meta, "choices": ["not a choice"]})
    elif kind == "indexstr":
        chunks.append({**meta, "choices": [{"index": "x", "delta": {"content": " there"}}]})
    chunks.append({**meta, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if kind == "usagestr":
        chunks.append({**meta, "choices": [], "usage": {"prompt_tokens": "many", "completion_tokens": 1}})
    for chunk in chunks:
        await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


@pytest.fixture(scope="module")
def upstream(fake_upstream: FakeUpstream) -> FakeUpstream:
    fake_upstream.add_mode("junk", mode_junk)
    return fake_upstream


KINDS = ["error200", "choicesnum", "choicestr", "messagestr", "argsdict", "usagetext"]
NATIVE_KINDS = ["error200", "outputnum", "textnum"]
STREAM_KINDS = ["chunkstr", "indexstr"]
EMBEDDING_KINDS = ["error200", "datastr"]


@pytest.fixture(scope="module")
def gw(
    upstream: FakeUpstream, project_factory: ProjectFactory, gateway_factory: GatewayFactory
) -> Iterator[GatewayProcess]:
    routers: dict[str, Any] = {}
    for kind in [*KINDS, *STREAM_KINDS, "usagestr"]:
        routers[f"j-{kind}"] = {"deployments": [deployment("junky", upstream.url(f"junk-{kind}"))]}
    for kind in NATIVE_KINDS:
        routers[f"n-{kind}"] = {
            "deployments": [deployment("junky", upstream.url(f"junk-{kind}-n"), responses="native")]
        }
    for kind in EMBEDDING_KINDS:
        routers[f"e-{kind}"] = {
            "kind": "embedding",
            "deployments": [deployment("junky", upstream.url(f"junk-{kind}-e"))],
        }
    files = {"config/gateway.yaml": FAST_GATEWAY_YAML}
    with gateway_factory(project_factory(routers, files=files)) as gateway:
        yield gateway


def call(gw: GatewayProcess, surface: str, model: str, *, stream: bool = False) -> httpx.Response:
    text = "hello there"
    bodies: dict[str, tuple[str, dict[str, Any]]] = {
        "chat": ("/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": text}]}),
        "completions": ("/v1/completions", {"model": model, "prompt": text}),
        "responses": ("/v1/responses", {"model": model, "input": text}),
        "messages": (
            "/v1/messages",
            {"model": model, "max_tokens": 20, "messages": [{"role": "user", "content": text}]},
        ),
    }
    path, body = bodies[surface]
    if stream:
        body["stream"] = True
    with gw.http(timeout=30) as http:
        r = http.post(path, json=body, headers=gw.auth())
        r.read()
        return r


def surface_error(surface: str, r: httpx.Response) -> tuple[str, str]:
    """(type, message) of a plain error answer in the surface's shape."""
    data = r.json()
    if surface == "messages":
        assert data["type"] == "error", data
        return data["error"]["type"], data["error"]["message"]
    return data["error"]["type"], data["error"]["message"]


def one_row(gw: GatewayProcess, r: httpx.Response) -> dict[str, Any]:
    request_id = r.headers["x-opsgate-request-id"]
    row = gw.log_row(request_id)
    assert gw.count_rows(request_id) == 1
    return row


@pytest.mark.parametrize("surface", ["chat", "completions", "responses", "messages"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_plain_answer_that_is_not_an_answer_is_a_502_naming_the_deployment(
    gw: GatewayProcess, surface: str, kind: str
) -> None:
    route = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "responses": "/v1/responses",
             "messages": "/v1/messages"}[surface]  # fmt: skip
    before = metric(gw.metrics(), "opsgate_requests_total", route=route, status="502")
    r = call(gw, surface, f"j-{kind}")
    assert r.status_code == 502, r.text
    kind_, message = surface_error(surface, r)
    assert kind_ == ("api_error" if surface == "messages" else "upstream_error"), r.text
    assert "deployment 'junky'" in message, message
    if kind == "error200":
        assert "quota exceeded for this project" in message
    if kind == "usagetext":
        assert "usage.prompt_tokens = 'many', which is not a token count" in message
    row = one_row(gw, r)
    assert (row["status"], row["deployment"]) == (502, "junky"), row
    assert row["attempts"][-1]["ok"] is False, row["attempts"]
    assert metric(gw.metrics(), "opsgate_requests_total", route=route, status="502") == before + 1


@pytest.mark.parametrize("kind", NATIVE_KINDS)
def test_a_native_responses_answer_that_is_not_a_response_is_a_502(gw: GatewayProcess, kind: str) -> None:
    r = call(gw, "responses", f"n-{kind}")
    assert r.status_code == 502, r.text
    assert r.json()["error"]["type"] == "upstream_error"
    assert "deployment 'junky'" in r.json()["error"]["message"]
    row = one_row(gw, r)
    assert (row["status"], row["deployment"]) == (502, "junky"), row
    assert row["attempts"][-1]["ok"] is False


@pytest.mark.parametrize("kind", EMBEDDING_KINDS)
def test_an_embeddings_answer_that_is_not_embeddings_is_a_502(gw: GatewayProcess, kind: str) -> None:
    with gw.http(timeout=30) as http:
        r = http.post("/v1/embeddings", json={"model": f"e-{kind}", "input": "hello"}, headers=gw.auth())
    assert r.status_code == 502, r.text
    assert r.json()["error"]["type"] == "upstream_error"
    assert "deployment 'junky'" in r.json()["error"]["message"]
    row = one_row(gw, r)
    assert (row["status"], row["deployment"]) == (502, "junky"), row
    assert row["attempts"][-1]["ok"] is False


def events_of(r: httpx.Response) -> list[tuple[str | None, Any]]:
    out: list[tuple[str | None, Any]] = []
    event = None
    for line in r.text.splitlines():
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
            out.append((event, data if data == "[DONE]" else orjson.loads(data)))
            event = None
    return out


@pytest.mark.parametrize("surface", ["chat", "completions", "responses", "messages"])
@pytest.mark.parametrize("kind", STREAM_KINDS)
def test_a_stream_with_garbage_ends_with_the_surfaces_error_and_a_502_row(
    gw: GatewayProcess, surface: str, kind: str
) -> None:
    r = call(gw, surface, f"j-{kind}", stream=True)
    assert r.status_code == 200  # the stream had started
    events = events_of(r)
    assert events and events[-1][1] != "[DONE]", events
    last_event, last = events[-1]
    if surface == "responses":
        assert last_event == "response.failed" and last["response"]["status"] == "failed", events[-3:]
        assert "deployment 'junky'" in last["response"]["error"]["message"]
    elif surface == "messages":
        assert last_event == "error" and last["error"]["type"] == "api_error", events[-3:]
        assert "deployment 'junky'" in last["error"]["message"]
    else:
        assert last["error"]["type"] == "upstream_error", events[-3:]
        assert "deployment 'junky'" in last["error"]["message"]
        assert events[-2][1]["choices"][0]["finish_reason"] == "error"
    row = one_row(gw, r)
    assert (row["status"], row["stream"]) == (502, True), row
    assert row["attempts"][-1]["ok"] is False, row["attempts"]


@pytest.mark.parametrize("surface", ["chat", "completions", "responses", "messages"])
def test_a_streamed_usage_that_is_not_a_count_is_counted_by_the_gateway(
    gw: GatewayProcess, surface: str
) -> None:
    """The answer itself arrived whole: the stream ends as usual, with the gateway's own count (never
    the upstream's text), and the row says why."""
    r = call(gw, surface, "j-usagestr", stream=True)
    assert r.status_code == 200
    events = events_of(r)
    assert "many" not in r.text
    last_event, last = events[-1]
    if surface == "responses":
        assert last_event == "response.completed", events[-3:]
        assert last["response"]["usage"]["input_tokens"] > 0
    elif surface == "messages":
        assert last_event == "message_stop", events[-3:]
        assert events[-2][1]["usage"]["input_tokens"] > 0
    else:
        assert last == "[DONE]", events[-3:]
    row = one_row(gw, r)
    assert row["status"] == 200 and row["tokens_in"] > 0, row
    assert "usage.prompt_tokens = 'many'" in row["extra"]["usage_error"]
