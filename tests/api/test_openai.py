"""The OpenAI-compatible endpoints, driven by the official `openai` client against the real server."""

from __future__ import annotations

import base64
import re
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import orjson
import pytest

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import GatewayProcess

VERSIONS = re.compile(r"^router:(?P<name>[a-z0-9._-]+)@(?P<version>\d+)#(?P<hash>[0-9a-f]{12})$")
CONTEXT = (
    "Paris is the capital of France. Berlin is the capital of Germany. "
    "The Rhine flows through Germany and the Netherlands."
)
MESSAGES = [
    {"role": "system", "content": CONTEXT},
    {"role": "user", "content": "What is the capital of Germany?"},
]


@pytest.fixture(scope="module")
def started(spine_gateway: GatewayProcess) -> Iterator[tuple[GatewayProcess, threading.Thread]]:
    gateway = spine_gateway
    # The first embedding loads torch and MiniLM (~10 s): start it now, alongside the chat tests.
    warmup = threading.Thread(
        target=lambda: gateway.client(timeout=300).embeddings.create(model="minilm", input="warm up"),
        daemon=True,
    )
    warmup.start()
    yield gateway, warmup
    warmup.join(timeout=300)


@pytest.fixture(scope="module")
def gw(started: tuple[GatewayProcess, threading.Thread]) -> GatewayProcess:
    return started[0]


@pytest.fixture(scope="module")
def minilm(started: tuple[GatewayProcess, threading.Thread]) -> GatewayProcess:
    """The gateway once its embedding model is loaded."""
    gateway, warmup = started
    warmup.join(timeout=300)
    assert not warmup.is_alive()
    return gateway


def model_card(gw: GatewayProcess, name: str) -> dict:
    with gw.http() as http:
        return http.get(f"/v1/models/{name}", headers=gw.auth()).json()


def assert_stamped(gw: GatewayProcess, headers: httpx.Headers, router: str) -> None:
    assert re.fullmatch(r"req_[0-9a-f]{24}", headers["x-opsgate-request-id"])
    match = VERSIONS.match(headers["x-opsgate-versions"])
    assert match, headers["x-opsgate-versions"]
    card = model_card(gw, router)["opsgate"]
    assert match["name"] == router
    assert int(match["version"]) == card["version"]
    assert match["hash"] == card["hash"][:12]


# -- chat ------------------------------------------------------------------------------------------------


def test_chat_sync_answers_from_context_with_headers(gw: GatewayProcess) -> None:
    raw = gw.client().chat.completions.with_raw_response.create(model="default", messages=MESSAGES)
    reply = raw.parse()
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == '"Berlin is the capital of Germany."'
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert reply.usage.prompt_tokens > 10
    assert reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert_stamped(gw, raw.headers, "default")


async def test_chat_async(gw: GatewayProcess) -> None:
    async with gw.async_client() as client:
        reply = await client.chat.completions.create(model="default", messages=MESSAGES)
    assert reply.choices[0].message.content == '"Berlin is the capital of Germany."'
    assert reply.choices[0].finish_reason == "stop"


def test_router_prefix_addresses_the_same_router(gw: GatewayProcess) -> None:
    raw = gw.client().chat.completions.with_raw_response.create(model="router:default", messages=MESSAGES)
    assert raw.parse().choices[0].message.content == '"Berlin is the capital of Germany."'
    assert raw.headers["x-opsgate-versions"].startswith("router:default@")


def test_stream_without_usage_sends_no_usage_chunk(gw: GatewayProcess) -> None:
    full = gw.client().chat.completions.create(model="default", messages=MESSAGES)
    chunks = list(gw.client().chat.completions.create(model="default", messages=MESSAGES, stream=True))
    assert len(chunks) >= 3
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert all(c.usage is None for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]


def test_stream_with_include_usage_ends_with_the_usage_chunk(gw: GatewayProcess) -> None:
    full = gw.client().chat.completions.create(model="default", messages=MESSAGES)
    chunks = list(
        gw.client().chat.completions.create(
            model="default", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert full.usage is not None
    assert last.usage.prompt_tokens == full.usage.prompt_tokens
    assert last.usage.completion_tokens == full.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_n_choices_from_the_local_provider(gw: GatewayProcess) -> None:
    """`n` is honoured: the deterministic answerer gives n identical choices, each counted in usage."""
    one = gw.client().chat.completions.create(model="default", messages=MESSAGES)
    three = gw.client().chat.completions.create(model="default", messages=MESSAGES, n=3)
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert {c.message.content for c in three.choices} == {one.choices[0].message.content}
    assert one.usage is not None and three.usage is not None
    assert three.usage.completion_tokens == 3 * one.usage.completion_tokens
    chunks = list(
        gw.client().chat.completions.create(
            model="default", messages=MESSAGES, n=2, stream=True, stream_options={"include_usage": True}
        )
    )
    texts: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
    assert texts == {0: one.choices[0].message.content, 1: one.choices[0].message.content}
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 2 * one.usage.completion_tokens


async def test_stream_async(gw: GatewayProcess) -> None:
    async with gw.async_client() as client:
        stream = await client.chat.completions.create(model="default", messages=MESSAGES, stream=True)
        pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(pieces) == '"Berlin is the capital of Germany."'


def test_stream_on_the_wire_is_sse_ending_with_done(gw: GatewayProcess) -> None:
    body = {"model": "default", "messages": MESSAGES, "stream": True}
    with gw.http() as http, http.stream("POST", "/v1/chat/completions", json=body, headers=gw.auth()) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert_stamped(gw, r.headers, "default")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert events.count("data: [DONE]") == 1
    for event in events[:-1]:
        assert orjson.loads(event[6:])["object"] == "chat.completion.chunk"


def test_citations_of_id_passages_through_the_server(gw: GatewayProcess) -> None:
    context = (
        "Answer using only this context, citing [ids].\n"
        "[doc-1] Refunds are issued within 14 days of the return.\n"
        "[doc-2] Shipping is free for orders over 50 euros.\n"
    )
    reply = gw.client().chat.completions.create(
        model="default",
        messages=[{"role": "system", "content": context}, {"role": "user", "content": "Is shipping free?"}],
    )
    assert reply.choices[0].message.content == '"Shipping is free for orders over 50 euros." [doc-2]'


# -- embeddings ------------------------------------------------------------------------------------------


def test_embeddings_float_minilm(minilm: GatewayProcess) -> None:
    texts = ["The cat sits on the mat.", "A cat is sitting on a rug.", "Quarterly tax filing deadlines."]
    raw = minilm.client(timeout=120).embeddings.with_raw_response.create(
        model="minilm", input=texts, encoding_format="float"
    )
    result = raw.parse()
    assert_stamped(minilm, raw.headers, "minilm")
    assert [d.index for d in result.data] == [0, 1, 2]
    vectors = np.array([d.embedding for d in result.data])
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    similar, dissimilar = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert similar > dissimilar + 0.3
    assert result.usage.prompt_tokens > 0


def test_embeddings_base64_on_the_wire_and_through_the_client(minilm: GatewayProcess) -> None:
    text = "The cat sits on the mat."
    floats = minilm.client(timeout=120).embeddings.create(model="minilm", input=text, encoding_format="float")
    body = {"model": "minilm", "input": [text], "encoding_format": "base64"}
    with minilm.http(timeout=120) as http:
        wire = http.post("/v1/embeddings", json=body, headers=minilm.auth()).json()
    encoded = wire["data"][0]["embedding"]
    assert isinstance(encoded, str)
    decoded = struct.unpack("<384f", base64.b64decode(encoded))
    np.testing.assert_allclose(decoded, floats.data[0].embedding, atol=1e-6)
    # the openai client asks for base64 by default and decodes it itself
    default = minilm.client(timeout=120).embeddings.create(model="minilm", input=text)
    np.testing.assert_allclose(default.data[0].embedding, floats.data[0].embedding, atol=1e-6)


def test_chat_router_refuses_embeddings_and_back(gw: GatewayProcess) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        gw.client().embeddings.create(model="default", input="x")
    assert exc.value.code == "wrong_model_kind"
    with pytest.raises(openai.BadRequestError):
        gw.client().chat.completions.create(model="minilm", messages=MESSAGES)


# -- models and health -------------------------------------------------------------------------------------


def test_models_list_and_retrieve(gw: GatewayProcess) -> None:
    client = gw.client()
    ids = [m.id for m in client.models.list()]
    assert ids == sorted(ids)
    assert {"default", "minilm"} <= set(ids)
    model = client.models.retrieve("default")
    assert model.id == "default"
    assert model.owned_by == "opsgate-local"
    card = model_card(gw, "default")["opsgate"]
    assert card["local"] is True
    assert card["providers"] == ["local"]
    assert card["serves"] == "chat"
    assert "local" in card["description"].lower()
    assert model_card(gw, "minilm")["opsgate"]["serves"] == "embedding"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")

    # Listing and describing models are requests too: each gets its log row.
    listed = client.models.with_raw_response.list()
    missing = gw.http().get("/v1/models/no-such-model", headers=gw.auth())
    rows = gw.log_rows([listed.headers["x-opsgate-request-id"], missing.headers["x-opsgate-request-id"]])
    assert rows[listed.headers["x-opsgate-request-id"]]["status"] == 200
    assert rows[listed.headers["x-opsgate-request-id"]]["route"] == "/v1/models"
    miss = rows[missing.headers["x-opsgate-request-id"]]
    assert (
        miss["status"] == 404 and miss["model"] == "no-such-model" and miss["error_type"] == "model_not_found"
    )


def test_no_classic_model_means_no_scikit_learn_in_memory(
    project_factory: ProjectFactory, gateway_factory: GatewayFactory
) -> None:
    """scikit-learn (with scipy and pandas, ~170 MB) is loaded by the first classic model (or by the local
    MiniLM embedder, which imports it), not by every gateway: this one serves chat only."""
    with gateway_factory(project_factory()) as fresh:
        reply = fresh.client().chat.completions.create(model="default", messages=MESSAGES)
        assert reply.choices[0].message.content
        with fresh.http() as http:
            assert http.get("/readyz").json()["checks"]["models"]["loaded"] == 0
        assert fresh.process is not None
        maps = Path(f"/proc/{fresh.process.pid}/maps").read_text(encoding="utf-8")
    assert "site-packages/sklearn/" not in maps and "site-packages/scipy/" not in maps


def test_health_and_readiness(gw: GatewayProcess) -> None:
    with gw.http() as http:
        health = http.get("/healthz")
        ready = http.get("/readyz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    assert ready.status_code == 200
    checks = ready.json()
    assert checks["status"] == "ready"
    assert checks["checks"]["database"] is True
    assert checks["checks"]["request_log"]["running"] is True


@pytest.mark.parametrize(
    ("method", "path", "body", "auth", "status"),
    [
        ("POST", "/v1/chat/completions", {"model": "default", "messages": MESSAGES}, True, 200),
        ("POST", "/v1/chat/completions", {"model": "default", "messages": MESSAGES}, False, 401),
        ("POST", "/v1/chat/completions", {"model": "nope", "messages": MESSAGES}, True, 404),
        ("POST", "/v1/chat/completions", {"model": "default"}, True, 400),
        ("POST", "/v1/embeddings", {"model": "minilm"}, True, 400),
        ("GET", "/v1/models", None, True, 200),
        ("GET", "/v1/models", None, False, 401),
        ("GET", "/v1/models/default", None, True, 200),
        ("GET", "/healthz", None, False, 200),
        ("GET", "/readyz", None, False, 200),
        ("GET", "/metrics", None, True, 200),
        ("GET", "/metrics", None, False, 401),
        ("GET", "/v1/nowhere", None, True, 404),
    ],
)
def test_every_answer_carries_the_opsgate_headers(
    gw: GatewayProcess, method: str, path: str, body: dict | None, auth: bool, status: int
) -> None:
    with gw.http() as http:
        r = http.request(method, path, json=body, headers=gw.auth() if auth else {})
    assert r.status_code == status
    assert re.fullmatch(r"req_[0-9a-f]{24}", r.headers["x-opsgate-request-id"])
    assert "x-opsgate-versions" in r.headers
    if path == "/v1/chat/completions" and status in (200, 400):
        assert VERSIONS.match(r.headers["x-opsgate-versions"]) or status == 400
    if status >= 400:
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}


def test_request_ids_are_unique(gw: GatewayProcess) -> None:
    with gw.http() as http:
        ids = {http.get("/healthz").headers["x-opsgate-request-id"] for _ in range(20)}
    assert len(ids) == 20
