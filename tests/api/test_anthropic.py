"""Anthropic's Messages API through the official `anthropic` client against the real server: plain,
streamed (Anthropic's events), tool use round trip, count_tokens, every optional parameter, and errors
in Anthropic's shape (with one log row each)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2
import pytest

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import FAST_GATEWAY_YAML, GatewayProcess, deployment
from tests.fakes.upstream import TOOL_CALL_ID, FakeUpstream, count_tokens, prompt_tokens

TOOLS: list[Any] = [
    {
        "name": "search_docs",
        "description": "Search the docs",
        "input_schema": {
            "type": "object",
            "properties": {"query": {"type": "string"}},
            "required": ["query"],
        },
    }
]


@pytest.fixture(scope="module")
def gw(
    project_factory: ProjectFactory, gateway_factory: GatewayFactory, fake_upstream: FakeUpstream
) -> Iterator[GatewayProcess]:
    routers: dict[str, Any] = {
        "echo": {"deployments": [deployment("up", fake_upstream.url("ok"))]},
        "fake": {"deployments": [deployment("up", fake_upstream.url("tools"))]},
        "broken": {"deployments": [deployment("up", fake_upstream.url("500-anthropic"))]},
    }
    project = project_factory(routers=routers, files={"config/gateway.yaml": FAST_GATEWAY_YAML})
    with gateway_factory(project) as gateway:
        yield gateway


def claude(gw: GatewayProcess, key: str | None = None) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key=key or gw.admin_key,
        base_url=gw.root_url,
        max_retries=0,
        timeout=30,
        http_client=httpx2.Client(trust_env=False),
        _strict_response_validation=True,
    )


def last_sent(upstream: FakeUpstream) -> dict[str, Any]:
    return dict(upstream.hits(endpoint="chat/completions")[-1]["json"])


def test_plain_message_with_every_parameter(gw: GatewayProcess, fake_upstream: FakeUpstream) -> None:
    raw = claude(gw).messages.with_raw_response.create(
        model="echo",
        max_tokens=64,
        system=[{"type": "text", "text": "Be brief."}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "Hello Claude"}]}],
        stop_sequences=["END"],
        metadata={"user_id": "u-7"},
        tool_choice={"type": "auto"},
        tools=TOOLS,
        cache_control={"type": "ephemeral"},
        service_tier="auto",
        output_config={"effort": "low"},
        extra_body={"temperature": 0.2, "top_p": 0.9},  # older Messages clients still send them
    )
    message = raw.parse()
    request_id = raw.headers["x-opsgate-request-id"]
    assert message.id == "msg_" + request_id.removeprefix("req_")
    assert message.type == "message" and message.role == "assistant" and message.model == "echo"
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == "echo: Hello Claude"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    sent = last_sent(fake_upstream)
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello Claude"},
    ]
    assert (sent["max_tokens"], sent["stop"], sent["user"], sent["tool_choice"]) == (
        64,
        ["END"],
        "u-7",
        "auto",
    )
    assert message.usage.input_tokens == prompt_tokens(sent["messages"])
    assert message.usage.output_tokens == count_tokens("echo: Hello Claude")
    row = gw.log_row(request_id)
    assert (
        row["route"] == "/v1/messages"
        and row["status"] == 200
        and row["artifacts"][0].startswith("router:echo@")
    )


def test_output_format_json_schema(gw: GatewayProcess, fake_upstream: FakeUpstream) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    claude(gw).messages.create(
        model="echo",
        max_tokens=16,
        messages=[{"role": "user", "content": "json"}],
        output_config={"format": {"type": "json_schema", "schema": schema}},
    )
    assert last_sent(fake_upstream)["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema, "strict": True},
    }


def test_stream_events(gw: GatewayProcess) -> None:
    client = claude(gw)
    with client.messages.stream(
        model="echo", max_tokens=32, messages=[{"role": "user", "content": "stream to me"}]
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[1] == "content_block_start"
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert final.content[0].text == "echo: stream to me"  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == count_tokens("echo: stream to me") and final.usage.input_tokens > 0


def test_tool_use_round_trip_streamed(gw: GatewayProcess) -> None:
    client = claude(gw)
    messages: list[Any] = [{"role": "user", "content": "find retention"}]
    with client.messages.stream(model="fake", max_tokens=64, messages=messages, tools=TOOLS) as stream:
        first = stream.get_final_message()
    assert first.stop_reason == "tool_use"
    use = first.content[0]
    assert use.type == "tool_use" and use.id == TOOL_CALL_ID and use.name == "search_docs"
    assert use.input == {"query": "find retention"}
    messages += [
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "retention_days: 30"}],
        },
    ]
    answer = client.messages.create(model="fake", max_tokens=64, messages=messages, tools=TOOLS)
    assert answer.content[0].text == "tool said: retention_days: 30"  # type: ignore[union-attr]
    plain = client.messages.create(model="fake", max_tokens=64, messages=messages[:1], tools=TOOLS)
    assert plain.content[0].type == "tool_use" and plain.content[0].input == {"query": "find retention"}


def test_count_tokens(gw: GatewayProcess) -> None:
    messages: list[Any] = [{"role": "user", "content": "how many tokens is this"}]
    counted = claude(gw).messages.count_tokens(model="echo", messages=messages, system="Be brief.")
    assert counted.input_tokens == prompt_tokens(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "how many tokens is this"}]
    )
    hinted = claude(gw).messages.count_tokens(
        model="echo",
        messages=messages,
        system="Be brief.",
        extra_body={"cache_control": {"type": "ephemeral"}},
    )
    assert hinted.input_tokens == counted.input_tokens


def test_errors_in_anthropic_shape(gw: GatewayProcess) -> None:
    with pytest.raises(anthropic.AuthenticationError) as auth:
        claude(gw, "sk-og-not-a-key").messages.create(
            model="echo", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )
    assert auth.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": auth.value.body["error"]["message"]},
    }  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude(gw).messages.create(model="nope", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.InternalServerError) as upstream:
        claude(gw).messages.create(model="broken", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert upstream.value.body["type"] == "error"  # type: ignore[index]
    with gw.http() as http:
        r = http.post(
            "/v1/messages", headers={"x-api-key": gw.admin_key}, json={"model": "echo", "messages": []}
        )
        assert r.status_code == 400
        assert r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error"
        assert "max_tokens" in r.json()["error"]["message"]
        assert gw.count_rows(r.headers["x-opsgate-request-id"]) == 1 or gw.log_row(
            r.headers["x-opsgate-request-id"]
        )
        r = http.post(
            "/v1/messages",
            headers={"x-api-key": gw.admin_key},
            json={
                "model": "echo",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "x"}],
                "mcp_servers": [],
            },
        )
        assert r.status_code == 400 and "mcp_servers" in r.json()["error"]["message"]


async def test_async_client(gw: GatewayProcess) -> None:
    client = anthropic.AsyncAnthropic(
        api_key=gw.admin_key,
        base_url=gw.root_url,
        max_retries=0,
        http_client=httpx2.AsyncClient(trust_env=False),
    )
    message = await client.messages.create(
        model="echo", max_tokens=16, messages=[{"role": "user", "content": "async"}]
    )
    assert message.content[0].text == "echo: async"  # type: ignore[union-attr]
