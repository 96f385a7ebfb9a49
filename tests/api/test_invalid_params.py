"""Invalid parameters on every model API, through the official clients against the real server: OpenAI's
surfaces (chat, completions, responses, embeddings, stored-completion updates) answer 400
`invalid_request_error` with the field in `param` and OpenAI's code, Anthropic's `/v1/messages` answers 400
in Anthropic's error shape; either way the request writes its one log row and nothing else (no upstream
call, nothing in the traffic store), streamed or not."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from sqlalchemy import text

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import FAST_GATEWAY_YAML, GatewayProcess, deployment
from tests.fakes.upstream import FakeUpstream

GATEWAY_YAML = FAST_GATEWAY_YAML + "traffic:\n  routers: [kept]\n"
MESSAGES: list[Any] = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def gw(
    project_factory: ProjectFactory, gateway_factory: GatewayFactory, fake_upstream: FakeUpstream
) -> Iterator[GatewayProcess]:
    routers: dict[str, Any] = {
        "kept": {"deployments": [deployment("up", fake_upstream.url("ok"))]},
        "vectors": {"kind": "embedding", "deployments": [deployment("up", fake_upstream.url("ok"))]},
    }
    project = project_factory(routers=routers, files={"config/gateway.yaml": GATEWAY_YAML})
    with gateway_factory(project) as gateway:
        yield gateway


def refused_cleanly(gw: GatewayProcess, upstream: FakeUpstream, response: Any) -> None:
    """One log row with status 400, no upstream call, nothing stored."""
    request_id = response.headers["x-opsgate-request-id"]
    row = gw.log_row(request_id)
    assert gw.count_rows(request_id) == 1
    assert row["status"] == 400
    with gw._db().connect() as conn:
        stored = conn.execute(
            text("select count(*) from traffic_calls where request_id = :r"), {"r": request_id}
        ).scalar()
    assert stored == 0


def openai_refusal(
    gw: GatewayProcess, upstream: FakeUpstream, send: Callable[[openai.OpenAI], Any], param: str, code: str
) -> None:
    client = gw.client(_strict_response_validation=True)
    before = len(upstream.requests)
    with pytest.raises(openai.BadRequestError) as refused:
        send(client)
    error = refused.value
    assert error.status_code == 400
    assert error.type == "invalid_request_error"
    assert (error.param, error.code) == (param, code)
    assert error.body["message"].startswith(f"{param}: ")  # type: ignore[index]
    assert len(upstream.requests) == before
    refused_cleanly(gw, upstream, error.response)


CHAT: list[tuple[dict[str, Any], str, str]] = [
    ({"max_tokens": 0}, "max_tokens", "integer_below_min_value"),
    ({"max_completion_tokens": -1}, "max_completion_tokens", "integer_below_min_value"),
    ({"temperature": 5}, "temperature", "decimal_above_max_value"),
    ({"temperature": -0.5}, "temperature", "decimal_below_min_value"),
    ({"n": 0}, "n", "integer_below_min_value"),
    ({"top_p": "high"}, "top_p", "invalid_type"),
    ({"presence_penalty": 3}, "presence_penalty", "decimal_above_max_value"),
    ({"top_logprobs": 21}, "top_logprobs", "integer_above_max_value"),
    ({"seed": 1.5}, "seed", "invalid_type"),
    ({"store": "yes"}, "store", "invalid_type"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role", "invalid_value"),
    ({"messages": []}, "messages", "empty_array"),
]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(("extra", "param", "code"), CHAT, ids=[c[1] + "-" + c[2] for c in CHAT])
def test_chat(
    gw: GatewayProcess,
    fake_upstream: FakeUpstream,
    extra: dict[str, Any],
    param: str,
    code: str,
    stream: bool,
) -> None:
    body = {"messages": MESSAGES, "store": True, **extra}
    openai_refusal(
        gw,
        fake_upstream,
        lambda c: c.chat.completions.create(model="kept", stream=stream, **body),
        param,
        code,
    )


def test_chat_missing_messages_names_them(gw: GatewayProcess, fake_upstream: FakeUpstream) -> None:
    openai_refusal(
        gw,
        fake_upstream,
        lambda c: c.post("/chat/completions", body={"model": "kept"}, cast_to=dict),
        "messages",
        "missing_required_parameter",
    )


COMPLETIONS: list[tuple[dict[str, Any], str, str]] = [
    ({"max_tokens": 0}, "max_tokens", "integer_below_min_value"),
    ({"temperature": 5}, "temperature", "decimal_above_max_value"),
    ({"n": 0}, "n", "integer_below_min_value"),
    ({"top_p": "1"}, "top_p", "invalid_type"),
    ({"echo": 1}, "echo", "invalid_type"),
    ({"nonsense": 1}, "nonsense", "unknown_parameter"),
]


@pytest.mark.parametrize(
    ("extra", "param", "code"), COMPLETIONS, ids=[c[1] + "-" + c[2] for c in COMPLETIONS]
)
def test_completions(
    gw: GatewayProcess, fake_upstream: FakeUpstream, extra: dict[str, Any], param: str, code: str
) -> None:
    openai_refusal(
        gw,
        fake_upstream,
        lambda c: c.completions.create(model="kept", prompt="hi", extra_body={"store": True, **extra}),
        param,
        code,
    )


RESPONSES: list[tuple[dict[str, Any], str, str]] = [
    ({"max_output_tokens": 0}, "max_output_tokens", "integer_below_min_value"),
    ({"temperature": 5}, "temperature", "decimal_above_max_value"),
    ({"top_p": 2}, "top_p", "decimal_above_max_value"),
    ({"store": "yes"}, "store", "invalid_type"),
    (
        {"text": {"format": {"type": "json_schema", "name": "x", "schema": []}}},
        "text.format.schema",
        "invalid_type",
    ),
    ({"input": 7}, "input", "invalid_type"),
]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(("extra", "param", "code"), RESPONSES, ids=[c[1] + "-" + c[2] for c in RESPONSES])
def test_responses(
    gw: GatewayProcess,
    fake_upstream: FakeUpstream,
    extra: dict[str, Any],
    param: str,
    code: str,
    stream: bool,
) -> None:
    body = {"input": "hi", **extra}
    openai_refusal(
        gw,
        fake_upstream,
        lambda c: c.responses.create(model="kept", stream=stream, **body),
        param,
        code,
    )


EMBEDDINGS: list[tuple[dict[str, Any], str, str]] = [
    ({"dimensions": 0}, "dimensions", "integer_below_min_value"),
    ({"encoding_format": "hex"}, "encoding_format", "invalid_value"),
    ({"input": 42}, "input", "invalid_type"),
]


@pytest.mark.parametrize(("extra", "param", "code"), EMBEDDINGS, ids=[c[1] + "-" + c[2] for c in EMBEDDINGS])
def test_embeddings(
    gw: GatewayProcess, fake_upstream: FakeUpstream, extra: dict[str, Any], param: str, code: str
) -> None:
    body = {"input": "hi", **extra}
    openai_refusal(gw, fake_upstream, lambda c: c.embeddings.create(model="vectors", **body), param, code)


def test_stored_completion_update_with_bad_metadata(gw: GatewayProcess, fake_upstream: FakeUpstream) -> None:
    client = gw.client(_strict_response_validation=True)
    made = client.chat.completions.create(model="kept", messages=MESSAGES, store=True)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.update(made.id, metadata={"k": 1})  # type: ignore[dict-item]
    assert (refused.value.status_code, refused.value.type) == (400, "invalid_request_error")
    assert refused.value.param is not None and refused.value.param.startswith("metadata")
    assert client.chat.completions.retrieve(made.id).metadata in ({}, None)


MESSAGES_API: list[tuple[dict[str, Any], str]] = [
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 16, "temperature": 1.5}, "temperature"),
    ({"max_tokens": 16, "top_k": -1}, "top_k"),
    ({"max_tokens": 16, "top_p": "x"}, "top_p"),
    ({"max_tokens": 16, "stop_sequences": "END"}, "stop_sequences"),
    ({"max_tokens": 16, "unknown_field": 1}, "unknown_field"),
]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(("extra", "param"), MESSAGES_API, ids=[c[1] for c in MESSAGES_API])
def test_anthropic_messages(
    gw: GatewayProcess, fake_upstream: FakeUpstream, extra: dict[str, Any], param: str, stream: bool
) -> None:
    claude = anthropic.Anthropic(
        api_key=gw.admin_key,
        base_url=gw.root_url,
        max_retries=0,
        timeout=30,
        http_client=httpx2.Client(trust_env=False),
        _strict_response_validation=True,
    )
    before = len(fake_upstream.requests)
    extra_body = dict(extra)  # max_tokens included
    with pytest.raises(anthropic.BadRequestError) as refused:
        claude.messages.create(
            model="kept",
            messages=MESSAGES,
            max_tokens=1,  # replaced by extra_body
            stream=stream,
            extra_body=extra_body,
        )
    error = refused.value
    assert error.status_code == 400
    assert set(error.body) >= {"type", "error"}  # type: ignore[arg-type]
    assert error.body["type"] == "error"  # type: ignore[index]
    detail = error.body["error"]  # type: ignore[index]
    assert set(detail) == {"type", "message"}
    assert detail["type"] == "invalid_request_error"
    assert detail["message"].startswith(f"{param}: ")
    assert len(fake_upstream.requests) == before
    refused_cleanly(gw, fake_upstream, error.response)
