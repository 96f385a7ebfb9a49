"""Conversation objects through the official `openai` client (strict validation) against the real server,
on SQLite and PostgreSQL: create with items and metadata, retrieve, update, delete; items list (order,
cursor, limit), append, retrieve, delete; `/v1/responses` with `conversation` continuing it and appending
its input and output items (plain and streamed); ownership (another principal gets 404 everywhere);
refusals."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from sqlalchemy import text

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import FAST_GATEWAY_YAML, GatewayProcess, deployment
from tests.fakes.upstream import FakeUpstream
from tests.policy.conftest import make_key

# conversations over 600 bytes go to the payload table: both paths of every change are exercised
GATEWAY_YAML = FAST_GATEWAY_YAML + "traffic:\n  inline_max_bytes: 600\n  max_payload_bytes: 6000\n"


@pytest.fixture(scope="module")
def gw(
    db_url: str, project_factory: ProjectFactory, gateway_factory: GatewayFactory, fake_upstream: FakeUpstream
) -> Iterator[GatewayProcess]:
    routers: dict[str, Any] = {"echo": {"deployments": [deployment("up", fake_upstream.url("ok"))]}}
    project = project_factory(routers=routers, files={"config/gateway.yaml": GATEWAY_YAML})
    with gateway_factory(project, database_url=db_url) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def keys(gw: GatewayProcess) -> dict[str, str]:
    return {"alice": make_key(gw, "app:alice"), "mallory": make_key(gw, "app:mallory")}


def client(gw: GatewayProcess, key: str) -> openai.OpenAI:
    return gw.client(api_key=key, _strict_response_validation=True)


def last_sent(upstream: FakeUpstream) -> list[Any]:
    return list(upstream.hits(endpoint="chat/completions")[-1]["json"]["messages"])


def texts(items: list[Any]) -> list[tuple[str, str]]:
    return [(i.role, i.content[0].text) for i in items if i.type == "message"]


def test_create_retrieve_update_delete(gw: GatewayProcess, keys: dict[str, str]) -> None:
    alice = client(gw, keys["alice"])
    made = alice.conversations.create(
        items=[
            {"type": "message", "role": "system", "content": "Be brief."},
            {"type": "message", "role": "user", "content": "Hello!"},
        ],
        metadata={"topic": "demo"},
    )
    assert made.id.startswith("conv_") and made.object == "conversation"
    assert made.metadata == {"topic": "demo"} and made.created_at > 1_700_000_000
    assert alice.conversations.retrieve(made.id).model_dump() == made.model_dump()
    updated = alice.conversations.update(made.id, metadata={"topic": "changed"})
    assert updated.metadata == {"topic": "changed"}
    assert alice.conversations.retrieve(made.id).metadata == {"topic": "changed"}
    items = alice.conversations.items.list(made.id, order="asc")
    assert texts(items.data) == [("system", "Be brief."), ("user", "Hello!")]
    assert items.data[1].content[0].type == "input_text" and items.data[1].status == "completed"
    deleted = alice.conversations.delete(made.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (made.id, True, "conversation.deleted")
    with pytest.raises(openai.NotFoundError):
        alice.conversations.retrieve(made.id)
    with gw._db().connect() as conn:
        left = conn.execute(text("select count(*) from traffic_calls where id = :i"), {"i": made.id}).scalar()
    assert left == 0


def test_items_append_page_retrieve_delete(gw: GatewayProcess, keys: dict[str, str]) -> None:
    alice = client(gw, keys["alice"])
    conv = alice.conversations.create()
    assert alice.conversations.items.list(conv.id).data == []
    added = alice.conversations.items.create(
        conv.id,
        items=[{"type": "message", "role": "user", "content": f"question {i}"} for i in range(5)],
    )
    assert [i.content[0].text for i in added.data] == [f"question {i}" for i in range(5)]  # type: ignore[union-attr]
    assert added.first_id == added.data[0].id and added.has_more is False
    more = alice.conversations.items.create(
        conv.id,
        items=[
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "answer"}]},
            {"type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "found"},
        ],
    )
    assert [i.type for i in more.data] == ["message", "function_call", "function_call_output"]
    newest = alice.conversations.items.list(conv.id, limit=2)  # newest first by default
    assert [i.type for i in newest.data] == ["function_call_output", "function_call"] and newest.has_more
    everything = [i.id for i in alice.conversations.items.list(conv.id, order="asc", limit=100).data]
    assert len(everything) == 8 and len(set(everything)) == 8
    paged = alice.conversations.items.list(conv.id, order="asc", after=everything[2], limit=3)
    assert [i.id for i in paged.data] == everything[3:6] and paged.has_more
    assert [i.id for i in alice.conversations.items.list(conv.id, order="asc")] == everything  # auto-paging
    one = alice.conversations.items.retrieve(everything[0], conversation_id=conv.id)
    assert one.type == "message" and one.content[0].text == "question 0"  # type: ignore[union-attr]
    after_delete = alice.conversations.items.delete(everything[0], conversation_id=conv.id)
    assert after_delete.id == conv.id and after_delete.object == "conversation"
    assert [i.id for i in alice.conversations.items.list(conv.id, order="asc", limit=100).data] == everything[
        1:
    ]
    with pytest.raises(openai.NotFoundError) as gone:
        alice.conversations.items.retrieve(everything[0], conversation_id=conv.id)
    assert gone.value.body["param"] == "item_id"  # type: ignore[index]


def test_responses_continue_and_extend_the_conversation(
    gw: GatewayProcess, keys: dict[str, str], fake_upstream: FakeUpstream
) -> None:
    alice = client(gw, keys["alice"])
    conv = alice.conversations.create(
        items=[{"type": "message", "role": "user", "content": "My name is Ada."}]
    )
    first = alice.responses.create(model="echo", input="What is my name?", conversation=conv.id)
    assert first.conversation is not None and first.conversation.id == conv.id
    assert first.output_text == "echo: What is my name?"
    assert last_sent(fake_upstream) == [
        {"role": "user", "content": "My name is Ada."},
        {"role": "user", "content": "What is my name?"},
    ]
    stream = alice.responses.create(
        model="echo", input="And again?", conversation={"id": conv.id}, instructions="Be kind.", stream=True
    )
    events = list(stream)
    assert events[-1].type == "response.completed"
    assert events[-1].response.conversation is not None
    assert last_sent(fake_upstream) == [
        {"role": "system", "content": "Be kind."},  # instructions are not kept in the conversation
        {"role": "user", "content": "My name is Ada."},
        {"role": "user", "content": "What is my name?"},
        {"role": "assistant", "content": "echo: What is my name?"},
        {"role": "user", "content": "And again?"},
    ]
    items = alice.conversations.items.list(conv.id, order="asc").data
    assert texts(items) == [
        ("user", "My name is Ada."),
        ("user", "What is my name?"),
        ("assistant", "echo: What is my name?"),
        ("user", "And again?"),
        ("assistant", "echo: And again?"),
    ]
    assert items[2].id == first.output[0].id  # the response's own output item
    assert len({i.id for i in items}) == len(items)  # every item its own id (retrieve and delete name one)
    assert alice.responses.retrieve(first.id).conversation.id == conv.id  # type: ignore[union-attr]


def test_another_principal_gets_404_everywhere(gw: GatewayProcess, keys: dict[str, str]) -> None:
    alice, mallory = client(gw, keys["alice"]), client(gw, keys["mallory"])
    conv = alice.conversations.create(items=[{"type": "message", "role": "user", "content": "secret"}])
    item = alice.conversations.items.list(conv.id).data[0].id
    attempts = [
        lambda: mallory.conversations.retrieve(conv.id),
        lambda: mallory.conversations.update(conv.id, metadata={"x": "y"}),
        lambda: mallory.conversations.delete(conv.id),
        lambda: mallory.conversations.items.list(conv.id),
        lambda: mallory.conversations.items.create(conv.id, items=[{"role": "user", "content": "x"}]),
        lambda: mallory.conversations.items.retrieve(item, conversation_id=conv.id),
        lambda: mallory.conversations.items.delete(item, conversation_id=conv.id),
    ]
    for attempt in attempts:
        with pytest.raises(openai.NotFoundError):
            attempt()
    with pytest.raises(openai.NotFoundError) as refused:
        mallory.responses.create(model="echo", input="tell me", conversation=conv.id)
    assert refused.value.body["param"] == "conversation"  # type: ignore[index]
    assert texts(alice.conversations.items.list(conv.id).data) == [("user", "secret")]
    assert alice.conversations.retrieve(conv.id).metadata == {}
    assert client(gw, gw.admin_key).conversations.retrieve(conv.id).id == conv.id  # an admin sees all


@pytest.mark.parametrize(
    ("send", "param"),
    [
        (
            lambda c, conv: c.responses.create(model="echo", input="x", conversation=conv, store=False),
            "store",
        ),
        (
            lambda c, conv: c.responses.create(
                model="echo", input="x", conversation=conv, previous_response_id="resp_x"
            ),
            "conversation",
        ),
        (
            lambda c, conv: c.responses.create(model="echo", input="x", conversation={"nope": 1}),
            "conversation.id",
        ),
        (
            lambda c, conv: c.conversations.items.create(conv, items=[{"type": "web_search_call"}]),
            "items.0.type",
        ),
        (lambda c, conv: c.conversations.items.create(conv, items=[]), "items"),
        (
            lambda c, conv: c.conversations.create(items=[{"role": "user", "content": "x"}] * 21),
            "items",
        ),
        (lambda c, conv: c.conversations.update(conv, metadata={"k": 1}), "metadata.k"),
    ],
    ids=["store-false", "with-previous", "no-id", "item-type", "no-items", "21-items", "metadata"],
)
def test_refusals_name_the_parameter(gw: GatewayProcess, keys: dict[str, str], send: Any, param: str) -> None:
    alice = client(gw, keys["alice"])
    conv = alice.conversations.create()
    with pytest.raises(openai.BadRequestError) as refused:
        send(alice, conv.id)
    assert refused.value.type == "invalid_request_error" and refused.value.param == param
    assert alice.conversations.items.list(conv.id).data == []


def test_a_conversation_over_the_size_limit_is_refused_whole(
    gw: GatewayProcess, keys: dict[str, str]
) -> None:
    alice = client(gw, keys["alice"])
    conv = alice.conversations.create(items=[{"role": "user", "content": "a" * 2000}])
    alice.conversations.items.create(conv.id, items=[{"role": "user", "content": "b" * 2000}])
    with pytest.raises(openai.BadRequestError) as refused:
        alice.conversations.items.create(conv.id, items=[{"role": "user", "content": "c" * 2000}])
    assert refused.value.code == "conversation_too_large"
    assert [i.content[0].text[0] for i in alice.conversations.items.list(conv.id, order="asc").data] == [
        "a",
        "b",
    ]  # type: ignore[union-attr]


async def test_async_client(gw: GatewayProcess, keys: dict[str, str]) -> None:
    alice = gw.async_client(api_key=keys["alice"], _strict_response_validation=True)
    conv = await alice.conversations.create(metadata={"via": "async"})
    answer = await alice.responses.create(model="echo", input="async hello", conversation=conv.id)
    assert answer.output_text == "echo: async hello"
    items = [i async for i in alice.conversations.items.list(conv.id, order="asc")]
    assert [i.type for i in items] == ["message", "message"]
    assert (await alice.conversations.delete(conv.id)).deleted
