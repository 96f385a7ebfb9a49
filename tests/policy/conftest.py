"""Policy fixtures: fake-upstream modes that split answers across chunks or answer verbatim, keys with
chosen principals, and a project whose routers point at the fake upstream with known prices."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from aiohttp import web

from tests.fakes.gateway import GatewayProcess, deployment
from tests.fakes.upstream import UPSTREAM_MODEL, FakeUpstream, Hit, echo_text, message_text, usage_of

# Prices that make costs easy to reason about: $1 per million tokens either way.
PRICE = 1e-6


async def mode_chunks(hit: Hit) -> web.StreamResponse | None:
    """`policychunks-<n>`: streams the echo text in pieces of n characters, so values are split."""
    if hit.endpoint != "chat/completions" or not hit.stream:
        return None
    size = hit.int_arg(3)
    text = echo_text(hit.body)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(hit.request)
    meta = {"id": "chatcmpl-chunks", "object": "chat.completion.chunk", "created": 0, "model": UPSTREAM_MODEL}

    async def send(data: Any) -> None:
        await resp.write(b"data: " + (data if isinstance(data, bytes) else orjson.dumps(data)) + b"\n\n")

    await send({**meta, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
    for i in range(0, len(text), size):
        piece = text[i : i + size]
        await send({**meta, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
    await send({**meta, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if (hit.body.get("stream_options") or {}).get("include_usage"):
        await send({**meta, "choices": [], "usage": usage_of(hit.body, text)})
    await send(b"[DONE]")
    await resp.write_eof()
    return resp


async def mode_raw(hit: Hit) -> web.StreamResponse | None:
    """`policyraw`: answers with the last user message itself (no "echo: " prefix)."""
    users = [m for m in hit.body.get("messages") or () if isinstance(m, dict) and m.get("role") == "user"]
    return await hit.reply(content=message_text(users[-1]) if users else "")


@pytest.fixture(scope="session")
def upstream(fake_upstream: FakeUpstream) -> FakeUpstream:
    fake_upstream.add_mode("policychunks", mode_chunks)
    fake_upstream.add_mode("policyraw", mode_raw)
    return fake_upstream


def priced(dep_id: str, url: str, **fields: Any) -> dict[str, Any]:
    return deployment(dep_id, url, input_cost_per_token=PRICE, output_cost_per_token=PRICE, **fields)


def routers(upstream: FakeUpstream) -> dict[str, dict[str, Any]]:
    return {
        "echo": {"deployments": [priced("up", upstream.url("ok"))]},
        "raw": {"deployments": [priced("up", upstream.url("policyraw"))]},
        "chunks1": {"deployments": [priced("up", upstream.url("policychunks-1"))]},
        "chunks3": {"deployments": [priced("up", upstream.url("policychunks-3"))]},
        "chunks7": {"deployments": [priced("up", upstream.url("policychunks-7"))]},
        "slow": {"deployments": [priced("up", upstream.url("slow-400"))]},
        "vectors": {"kind": "embedding", "deployments": [priced("up", upstream.url("ok"))]},
    }


def make_key(gw: GatewayProcess, principal: str, role: str = "app") -> str:
    out = gw.cli(
        "keys", "create", "--name", principal, "--role", role, "--principal", principal, key=gw.admin_key
    ).stdout
    key = out.strip().splitlines()[-1]
    gw.wait_for_key(key)
    return key


def upstream_texts(upstream: FakeUpstream, since: int) -> str:
    """Everything the upstream received after the first `since` requests, as one JSON string."""
    return orjson.dumps([r["json"] for r in upstream.requests[since:]]).decode()


@pytest.fixture
def mark(upstream: FakeUpstream) -> Iterator[int]:
    yield len(upstream.requests)
