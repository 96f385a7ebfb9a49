"""Stored chat completions (`store: true`) through the official `openai` client against the real server,
on SQLite and PostgreSQL: create, retrieve, list (model, metadata, cursors), messages, update, delete;
redaction; streams and tool calls; ownership (another principal's key gets 404)."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from sqlalchemy import text

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import FAST_GATEWAY_YAML, GatewayProcess, deployment
from tests.fakes.upstream import TOOL_CALL_ID, FakeUpstream
from tests.policy.conftest import make_key

GATEWAY_YAML = FAST_GATEWAY_YAML + (
    "traffic:\n  routers: [kept]\n  inline_max_bytes: 600\n  max_payload_bytes: 40000\n"
)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "search_docs",
            "description": "Search the docs",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}},
                "required": ["query"],
            },
        },
    }
]


@pytest.fixture(scope="module")
def gw(
    db_url: str, project_factory: ProjectFactory, gateway_factory: GatewayFactory, fake_upstream: FakeUpstream
) -> Iterator[GatewayProcess]:
    routers: dict[str, Any] = {
        "fake": {"deployments": [deployment("up", fake_upstream.url("tools"))]},
        "other": {"deployments": [deployment("up", fake_upstream.url("ok"))]},
        "kept": {"deployments": [deployment("up", fake_upstream.url("ok"))]},
    }
    project = project_factory(routers=routers, files={"config/gateway.yaml": GATEWAY_YAML})
    with gateway_factory(project, database_url=db_url) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def keys(gw: GatewayProcess) -> dict[str, str]:
    return {"alice": make_key(gw, "app:alice"), "mallory": make_key(gw, "app:mallory")}


def client(gw: GatewayProcess, key: str) -> openai.OpenAI:
    return gw.client(api_key=key, _strict_response_validation=True)


def ask(c: openai.OpenAI, content: str, **kw: Any) -> Any:
    return c.chat.completions.create(
        model=kw.pop("model", "other"), messages=[{"role": "user", "content": content}], **kw
    )


def db_rows(gw: GatewayProcess, sql: str, **params: Any) -> list[Any]:
    with gw._db().connect() as conn:
        return list(conn.execute(text(sql), params))


def test_stored_completion_reads_back_with_lineage(gw: GatewayProcess, keys: dict[str, str]) -> None:
    alice = client(gw, keys["alice"])
    raw = alice.chat.completions.with_raw_response.create(
        model="other",
        messages=[{"role": "user", "content": "hello store"}],
        store=True,
        metadata={"team": "a"},
    )
    made = raw.parse()
    request_id = raw.headers["x-opsgate-request-id"]
    assert made.id == "chatcmpl-" + request_id.removeprefix("req_")
    got = alice.chat.completions.retrieve(made.id)
    assert got.id == made.id
    assert got.choices[0].message.content == "echo: hello store"
    assert got.usage is not None and got.usage.total_tokens == made.usage.total_tokens  # type: ignore[union-attr]
    assert got.metadata == {"team": "a"}  # type: ignore[index]
    assert got.model_extra["request_id"] == request_id  # type: ignore[index]
    row = gw.log_row(request_id)
    assert row["extra"]["traffic"] == {"id": made.id, "stored": True}
    stored = db_rows(gw, "select request_id from traffic_calls where id = :id", id=made.id)
    assert [r[0] for r in stored] == [request_id]
    # the gateway is the store: `store` is not sent upstream
    assert "store" not in gw_upstream_body(gw, "hello store")


def gw_upstream_body(gw: GatewayProcess, content: str) -> dict[str, Any]:
    upstream: FakeUpstream = gw.fake_upstream  # type: ignore[attr-defined]
    for hit in reversed(upstream.requests):
        if content in str(hit["json"].get("messages")):
            return dict(hit["json"])
    raise AssertionError(f"the upstream never got {content!r}")


@pytest.fixture(autouse=True)
def _upstream_on_gw(gw: GatewayProcess, fake_upstream: FakeUpstream) -> None:
    gw.fake_upstream = fake_upstream  # type: ignore[attr-defined]


def test_unstored_completion_is_not_found(gw: GatewayProcess, keys: dict[str, str]) -> None:
    alice = client(gw, keys["alice"])
    made = ask(alice, "not kept")
    with pytest.raises(openai.NotFoundError):
        alice.chat.completions.retrieve(made.id)


def test_another_principal_gets_404_everywhere(gw: GatewayProcess, keys: dict[str, str]) -> None:
    alice, mallory = client(gw, keys["alice"]), client(gw, keys["mallory"])
    made = ask(alice, "alice's secret plan", store=True)
    for attempt in (
        lambda: mallory.chat.completions.retrieve(made.id),
        lambda: mallory.chat.completions.messages.list(made.id),
        lambda: mallory.chat.completions.update(made.id, metadata={"x": "y"}),
        lambda: mallory.chat.completions.delete(made.id),
    ):
        with pytest.raises(openai.NotFoundError) as err:
            attempt()
        assert "secret" not in str(err.value.body)
    assert made.id not in [c.id for c in mallory.chat.completions.list(limit=100)]
    # still there, unchanged, for its owner; and an admin sees it
    assert alice.chat.completions.retrieve(made.id).metadata == {}  # type: ignore[index]
    assert gw.client().chat.completions.retrieve(made.id).id == made.id


def test_list_filters_and_cursor_pages(gw: GatewayProcess, keys: dict[str, str]) -> None:
    key = make_key(gw, "app:lister")
    c = client(gw, key)
    made = [ask(c, f"page {i}", store=True, metadata={"parity": str(i % 2)}).id for i in range(5)]
    ask(c, "on fake", model="fake", store=True)
    page = c.chat.completions.list(limit=2, model="other")
    assert [x.id for x in page.data] == made[:2] and page.has_more
    everything = [x.id for x in c.chat.completions.list(limit=2, model="other")]  # auto-pagination
    assert everything == made
    after = c.chat.completions.list(after=made[1], limit=10, model="other")
    assert [x.id for x in after.data] == made[2:] and not after.has_more
    desc = c.chat.completions.list(order="desc", limit=10, model="other")
    assert [x.id for x in desc.data] == made[::-1]
    odd = c.chat.completions.list(metadata={"parity": "1"}, limit=10)
    assert [x.id for x in odd.data] == [made[1], made[3]]
    assert len(c.chat.completions.list(limit=10).data) == 6


def test_messages_update_delete(gw: GatewayProcess, keys: dict[str, str]) -> None:
    alice = client(gw, keys["alice"])
    made = alice.chat.completions.create(
        model="other",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "what now"}],
        store=True,
    )
    # ChatCompletionStoreMessage types `role` as "assistant" only, while the API returns each input
    # message's own role: read them without strict validation
    messages = gw.client(api_key=keys["alice"]).chat.completions.messages.list(made.id)
    assert [(m.role, m.content) for m in messages.data] == [("system", "be brief"), ("user", "what now")]
    assert messages.data[0].id == f"{made.id}-0"
    one = gw.client(api_key=keys["alice"]).chat.completions.messages.list(made.id, limit=1, order="desc")
    assert [m.content for m in one.data] == ["what now"] and one.has_more
    updated = alice.chat.completions.update(made.id, metadata={"reviewed": "yes"})
    assert updated.metadata == {"reviewed": "yes"}  # type: ignore[index]
    assert alice.chat.completions.retrieve(made.id).metadata == {"reviewed": "yes"}  # type: ignore[index]
    gone = alice.chat.completions.delete(made.id)
    assert gone.deleted and gone.id == made.id and gone.object == "chat.completion.deleted"
    with pytest.raises(openai.NotFoundError):
        alice.chat.completions.retrieve(made.id)
    assert db_rows(gw, "select id from traffic_calls where id = :id", id=made.id) == []


def test_bad_list_parameters_are_400(gw: GatewayProcess, keys: dict[str, str]) -> None:
    with gw.http() as http:
        r = http.get("/v1/chat/completions?limit=0", headers=gw.auth(keys["alice"]))
        assert r.status_code == 400 and r.json()["error"]["param"] == "limit"
        r = http.get("/v1/chat/completions?order=up", headers=gw.auth(keys["alice"]))
        assert r.status_code == 400 and r.json()["error"]["param"] == "order"
        r = http.post("/v1/chat/completions/x", headers=gw.auth(keys["alice"]), json={"metadata": {"a": 1}})
        assert r.status_code == 400 and r.json()["error"]["param"].startswith("metadata")


def test_stored_text_is_redacted(gw: GatewayProcess, keys: dict[str, str]) -> None:
    alice = client(gw, keys["alice"])
    made = ask(alice, "mail me at jane.doe@example.com please", store=True)
    # the caller's own body held the address (the policy redacted only the copy sent upstream)
    messages = gw.client(api_key=keys["alice"]).chat.completions.messages.list(made.id)
    assert messages.data[0].content == "mail me at [REDACTED:EMAIL] please"
    stored = stored_text(gw, made.id)
    assert "jane.doe" not in stored and "[REDACTED:EMAIL]" in stored


def stored_text(gw: GatewayProcess, call_id: str) -> str:
    """Everything the database holds for a stored call, as text (its large payload decompressed)."""
    inline = db_rows(gw, "select payload from traffic_calls where id = :id", id=call_id)
    blob = db_rows(gw, "select data from traffic_payloads where call_id = :id", id=call_id)
    return str(inline) + "".join(zlib.decompress(bytes(r[0])).decode() for r in blob)


def test_stream_is_stored_with_its_id(gw: GatewayProcess, keys: dict[str, str]) -> None:
    alice = client(gw, keys["alice"])
    chunks = list(
        ask(alice, "stream me please", store=True, stream=True, stream_options={"include_usage": True})
    )
    ids = {c.id for c in chunks}
    assert len(ids) == 1
    (stored_id,) = ids
    got = alice.chat.completions.retrieve(stored_id)
    assert got.choices[0].message.content == "echo: stream me please"
    assert got.usage is not None and got.usage.completion_tokens > 0


def test_tool_calls_round_trip_and_are_stored(gw: GatewayProcess, keys: dict[str, str]) -> None:
    alice = client(gw, keys["alice"])
    messages: list[Any] = [{"role": "user", "content": "find the retention setting"}]
    with alice.chat.completions.stream(model="fake", messages=messages, tools=TOOLS, store=True) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    call = final.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.id == TOOL_CALL_ID and call.function.name == "search_docs"  # type: ignore[union-attr]
    assert call.function.arguments == '{"query":"find the retention setting"}'  # type: ignore[union-attr]
    stored = alice.chat.completions.retrieve(final.id)
    assert stored.choices[0].message.tool_calls[0].function.arguments == call.function.arguments  # type: ignore[index,union-attr]
    assert stored.choices[0].finish_reason == "tool_calls"
    messages += [final.choices[0].message.model_dump(exclude_none=True)]
    messages += [{"role": "tool", "tool_call_id": call.id, "content": "retention_days: 30"}]
    answer = alice.chat.completions.create(model="fake", messages=messages, tools=TOOLS)
    assert answer.choices[0].message.content == "tool said: retention_days: 30"


def test_router_stored_by_config_and_large_payload_in_blob_row(
    gw: GatewayProcess, keys: dict[str, str]
) -> None:
    alice = client(gw, keys["alice"])
    made = ask(alice, "kept by config " + "word " * 300, model="kept")
    assert alice.chat.completions.retrieve(made.id).choices[0].message.content.startswith("echo: kept")  # type: ignore[union-attr]
    rows = db_rows(gw, "select payload, size_bytes from traffic_calls where id = :id", id=made.id)
    assert rows[0][0] is None and rows[0][1] > 600  # not inline: in traffic_payloads
    assert len(db_rows(gw, "select call_id from traffic_payloads where call_id = :id", id=made.id)) == 1
    alice.chat.completions.delete(made.id)
    assert db_rows(gw, "select call_id from traffic_payloads where call_id = :id", id=made.id) == []


def test_oversized_call_is_answered_but_not_stored(gw: GatewayProcess, keys: dict[str, str]) -> None:
    alice = client(gw, keys["alice"])
    raw = alice.chat.completions.with_raw_response.create(
        model="other", messages=[{"role": "user", "content": "big " * 12000}], store=True
    )
    made = raw.parse()
    assert made.choices[0].message.content
    row = gw.log_row(raw.headers["x-opsgate-request-id"])
    assert row["extra"]["traffic"] == {"id": made.id, "stored": False, "reason": "too_large"}
    with pytest.raises(openai.NotFoundError):
        alice.chat.completions.retrieve(made.id)


async def test_async_client_store_and_retrieve(gw: GatewayProcess, keys: dict[str, str]) -> None:
    c = gw.async_client(api_key=keys["alice"], _strict_response_validation=True)
    made = await c.chat.completions.create(
        model="other", messages=[{"role": "user", "content": "async kept"}], store=True
    )
    got = await c.chat.completions.retrieve(made.id)
    assert got.choices[0].message.content == "echo: async kept"
    page = await c.chat.completions.list(limit=100)
    assert made.id in [x.id for x in page.data]
