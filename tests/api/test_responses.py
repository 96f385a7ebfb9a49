"""The Responses API through the official `openai` client (strict validation) against the real server:
create plain and streamed (event order, response.completed last with usage), retrieve, input items,
delete, previous_response_id, instructions, function tools and their outputs, text.format, store, and
ownership."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import FAST_GATEWAY_YAML, GatewayProcess, deployment
from tests.fakes.upstream import TOOL_CALL_ID, FakeUpstream, count_tokens
from tests.policy.conftest import make_key

TOOLS: list[Any] = [
    {
        "type": "function",
        "name": "search_docs",
        "description": "Search the docs",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
        "strict": True,
    }
]


@pytest.fixture(scope="module")
def gw(
    project_factory: ProjectFactory, gateway_factory: GatewayFactory, fake_upstream: FakeUpstream
) -> Iterator[GatewayProcess]:
    routers: dict[str, Any] = {
        "echo": {"deployments": [deployment("up", fake_upstream.url("ok"))]},
        "fake": {"deployments": [deployment("up", fake_upstream.url("tools"))]},
    }
    project = project_factory(routers=routers, files={"config/gateway.yaml": FAST_GATEWAY_YAML})
    with gateway_factory(project) as gateway:
        yield gateway


def strict(gw: GatewayProcess, key: str | None = None) -> openai.OpenAI:
    return gw.client(api_key=key or gw.admin_key, _strict_response_validation=True)


def last_sent(upstream: FakeUpstream) -> dict[str, Any]:
    return dict(upstream.hits(endpoint="chat/completions")[-1]["json"])


def test_create_retrieve_items_delete(gw: GatewayProcess, fake_upstream: FakeUpstream) -> None:
    client = strict(gw)
    raw = client.responses.with_raw_response.create(
        model="echo",
        input="What is opsgate?",
        instructions="Answer briefly.",
        temperature=0.3,
        top_p=0.9,
        max_output_tokens=50,
        metadata={"case": "one"},
        user="u1",
        parallel_tool_calls=False,
    )
    made = raw.parse()
    request_id = raw.headers["x-opsgate-request-id"]
    assert made.id == "resp_" + request_id.removeprefix("req_")
    assert made.status == "completed" and made.object == "response"
    assert made.output_text == "echo: What is opsgate?"
    assert made.instructions == "Answer briefly." and made.metadata == {"case": "one"}
    assert made.usage is not None and made.usage.output_tokens == count_tokens("echo: What is opsgate?")
    assert made.usage.total_tokens == made.usage.input_tokens + made.usage.output_tokens
    sent = last_sent(fake_upstream)
    assert sent["messages"] == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is opsgate?"},
    ]
    assert (sent["max_tokens"], sent["temperature"], sent["parallel_tool_calls"]) == (50, 0.3, False)
    assert "store" not in sent and "instructions" not in sent
    got = client.responses.retrieve(made.id)
    assert got.model_dump() == made.model_dump()
    items = client.responses.input_items.list(made.id)
    assert [(i.type, i.role, i.content[0].text) for i in items.data] == [  # type: ignore[union-attr]
        ("message", "user", "What is opsgate?")
    ]
    row = gw.log_row(request_id)
    assert row["route"] == "/v1/responses" and row["artifacts"][0].startswith("router:echo@")
    assert row["extra"]["traffic"]["id"] == made.id
    client.responses.delete(made.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(made.id)


def test_stream_events_in_order_completed_last(gw: GatewayProcess) -> None:
    client = strict(gw)
    events = list(client.responses.create(model="echo", input="stream these words", stream=True))
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert set(types[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")  # type: ignore[union-attr]
    assert text == "echo: stream these words"
    completed = events[-1].response  # type: ignore[union-attr]
    assert completed.output_text == text and completed.usage is not None
    assert completed.usage.output_tokens == count_tokens(text)
    stored = client.responses.retrieve(completed.id)
    assert stored.output_text == text and stored.output[0].id == completed.output[0].id


def test_previous_response_id_continues_without_old_instructions(
    gw: GatewayProcess, fake_upstream: FakeUpstream
) -> None:
    client = strict(gw)
    first = client.responses.create(model="echo", input="first question", instructions="Be formal.")
    second = client.responses.create(model="echo", input="second question", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    assert last_sent(fake_upstream)["messages"] == [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "echo: first question"},
        {"role": "user", "content": "second question"},
    ]


def test_function_tool_round_trip_streamed(gw: GatewayProcess) -> None:
    client = strict(gw)
    with client.responses.stream(model="fake", input="find retention", tools=TOOLS) as stream:
        kinds = [event.type for event in stream]
        first = stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds and kinds[-1] == "response.completed"
    call = first.output[0]
    assert call.type == "function_call" and call.call_id == TOOL_CALL_ID and call.name == "search_docs"
    assert call.arguments == '{"query":"find retention"}'
    answer = client.responses.create(
        model="fake",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "retention_days: 30"}],
        tools=TOOLS,
    )
    assert answer.output_text == "tool said: retention_days: 30"


def test_tool_call_plain_and_json_schema(gw: GatewayProcess, fake_upstream: FakeUpstream) -> None:
    client = strict(gw)
    made = client.responses.create(model="fake", input="look it up", tools=TOOLS, tool_choice="required")
    assert made.output[0].type == "function_call" and made.output[0].arguments == '{"query":"look it up"}'
    assert last_sent(fake_upstream)["tools"][0]["function"]["name"] == "search_docs"
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string"}},
        "required": ["a"],
        "additionalProperties": False,
    }
    client.responses.create(
        model="echo",
        input="json please",
        text={"format": {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}},
    )
    assert last_sent(fake_upstream)["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "thing", "schema": schema, "strict": True},
    }


def test_store_false_and_other_principal_get_404(gw: GatewayProcess) -> None:
    client = strict(gw)
    unstored = client.responses.create(model="echo", input="forget me", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)
    mine = client.responses.create(model="echo", input="admin's turn")
    other = strict(gw, make_key(gw, "app:eve"))
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError) as err:
        other.responses.create(model="echo", input="continue it", previous_response_id=mine.id)
    assert err.value.body["param"] == "previous_response_id"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(mine.id)
    assert client.responses.retrieve(mine.id).id == mine.id


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools.0"),
        ({"background": True}, "background"),
        ({"conversation": "conv_1", "previous_response_id": "resp_1"}, "conversation"),
        ({"bogus": 1}, "bogus"),
        ({"input": [{"type": "computer_call_output"}]}, "input.0.type"),
        ({"reasoning": {"effort": "low", "context": "auto"}}, "reasoning.context"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"moderation": {"model": "m"}}, "moderation"),
        ({"context_management": [{"type": "compaction"}]}, "context_management"),
    ],
)
def test_unservable_parameters_are_400(gw: GatewayProcess, extra: dict[str, Any], param: str) -> None:
    with gw.http() as http:
        r = http.post("/v1/responses", headers=gw.auth(), json={"model": "echo", "input": "x", **extra})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert r.json()["error"]["type"] == "invalid_request_error"


async def test_async_client(gw: GatewayProcess) -> None:
    client = gw.async_client(_strict_response_validation=True)
    made = await client.responses.create(model="echo", input="async hello")
    assert made.output_text == "echo: async hello"
    stream = await client.responses.create(model="echo", input="async stream", stream=True)
    last = [e async for e in stream][-1]
    assert last.type == "response.completed" and last.response.output_text == "echo: async stream"  # type: ignore[union-attr]


def test_a_stream_cut_upstream_ends_with_error_and_failed(
    gw: GatewayProcess,
    fake_upstream: FakeUpstream,
    project_factory: ProjectFactory,
    gateway_factory: GatewayFactory,
) -> None:
    routers: dict[str, Any] = {"cut": {"deployments": [deployment("up", fake_upstream.url("errevent-2"))]}}
    project = project_factory(routers=routers, files={"config/gateway.yaml": FAST_GATEWAY_YAML})
    with gateway_factory(project) as other:
        with other.http() as http:
            r = http.post(
                "/v1/responses",
                headers=other.auth(),
                json={"model": "cut", "input": "one two three four five", "stream": True, "store": False},
            )
        kinds = [line.split(": ", 1)[1] for line in r.text.splitlines() if line.startswith("event: ")]
        assert r.status_code == 200 and kinds[-2:] == ["error", "response.failed"]
        assert "response.output_text.delta" in kinds and "response.completed" not in kinds
        row = other.log_row(r.headers["x-opsgate-request-id"])
        assert row["status"] == 502 and other.count_rows(r.headers["x-opsgate-request-id"]) == 1
        with other.http() as http:
            r = http.post(
                "/v1/messages",
                headers={"x-api-key": other.admin_key},
                json={
                    "model": "cut",
                    "max_tokens": 9,
                    "messages": [{"role": "user", "content": "a b c d"}],
                    "stream": True,
                },
            )
        assert r.text.rstrip().splitlines()[-2] == "event: error"
        assert '"type":"error"' in r.text.rstrip().splitlines()[-1]
