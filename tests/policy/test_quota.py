"""Quota stores: GCRA rate buckets and budget ledgers, in-process and in a real Redis (127.0.0.1:6379),
decided atomically for all of a request's charges at once."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator

import pytest
from redis.exceptions import RedisError

from gateway.errors import OpsgateError
from gateway.flow.call import Call
from gateway.keys import Principal
from gateway.policy.base import Charge
from gateway.policy.pipeline import Pipeline
from gateway.policy.quota import MemoryStore, RedisStore, Settlement
from gateway.policy.spec import parse_policy, registered_checks
from gateway.routing.router import Router
from gateway.routing.spec import RouterSpec

REDIS_URL = "redis://127.0.0.1:6379/0"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def rpm(counter: str, limit: int, amount: int = 1, soft: bool = False) -> Charge:
    return Charge(counter, "rate", limit, amount, window_s=60, soft=soft, what="requests per minute")


def budget(counter: str, limit: int, amount: int, end: float = 2e9) -> Charge:
    return Charge(counter, "budget", limit, amount, period_end=end, what="the key's day budget")


async def test_memory_rate_bucket_allows_a_burst_then_the_rate() -> None:
    clock = Clock()
    store = MemoryStore(clock)
    results = [(await store.acquire([rpm("a", 3)])).refusal is None for _ in range(4)]
    assert results == [True, True, True, False]
    refused = (await store.acquire([rpm("a", 3)])).refusal
    assert refused is not None and refused.retry_after_s == pytest.approx(20)  # one slot per 20 s
    clock.now += 20
    assert (await store.acquire([rpm("a", 3)])).refusal is None


async def test_memory_charges_are_all_or_nothing() -> None:
    store = MemoryStore(Clock())
    assert (await store.acquire([rpm("a", 1)])).refusal is None
    grant = await store.acquire([rpm("b", 5), rpm("a", 1)])  # b fits, a does not: b is not taken
    assert grant.refusal is not None and grant.refusal.charge.counter == "a"
    assert [(await store.acquire([rpm("b", 5)])).refusal is None for _ in range(5)] == [True] * 5


async def test_memory_soft_charges_count_but_never_refuse() -> None:
    store = MemoryStore(Clock())
    grants = [await store.acquire([rpm("a", 1, soft=True)]) for _ in range(3)]
    assert [g.refusal for g in grants] == [None, None, None]
    assert [len(g.over) for g in grants] == [0, 1, 1]


async def test_memory_tokens_settle_to_the_true_count() -> None:
    clock = Clock()
    store = MemoryStore(clock)
    charge = rpm("t", 100, amount=10)
    assert (await store.acquire([charge])).refusal is None
    store.settle([Settlement(charge, 100)])  # the answer was long: 90 more tokens owed
    assert (await store.acquire([rpm("t", 100, amount=10)])).refusal is not None
    clock.now += 6  # 10 tokens per 6 s come back
    assert (await store.acquire([rpm("t", 100, amount=10)])).refusal is None


async def test_memory_budget_reserves_then_settles() -> None:
    store = MemoryStore(Clock())
    first = budget("b", 100, 60)
    assert (await store.acquire([first])).refusal is None
    assert (await store.acquire([budget("b", 100, 60)])).refusal is not None  # 60 reserved + 60 > 100
    store.settle([Settlement(first, 30)])  # it cost 30
    assert (await store.acquire([budget("b", 100, 60)])).refusal is None  # 30 + 60 <= 100
    refusal = (await store.acquire([budget("b", 100, 20)])).refusal
    assert refusal is not None and refusal.retry_after_s == pytest.approx(2e9 - 1_000_000.0)


async def test_memory_spent_budget_refuses_even_free_requests() -> None:
    store = MemoryStore(Clock())
    store.add_spent("b", 100, 2e9)
    assert (await store.acquire([budget("b", 100, 0)])).refusal is not None


# -- Redis ------------------------------------------------------------------------------------------------


@pytest.fixture
async def redis_store() -> AsyncIterator[RedisStore]:
    store = RedisStore(REDIS_URL, prefix=f"opsgate-test-{secrets.token_hex(4)}")
    await store.start()
    yield store
    await store.stop()


async def test_redis_rate_bucket_is_atomic_under_concurrency(redis_store: RedisStore) -> None:
    grants = await asyncio.gather(*(redis_store.acquire([rpm("a", 20)]) for _ in range(50)))
    assert sum(g.refusal is None for g in grants) == 20
    refusal = next(g.refusal for g in grants if g.refusal is not None)
    assert 2.5 < refusal.retry_after_s <= 3.0  # one slot per 3 s


async def test_redis_two_stores_share_counters(redis_store: RedisStore) -> None:
    other = RedisStore(REDIS_URL, prefix=redis_store.prefix)
    try:
        a = await asyncio.gather(*(redis_store.acquire([rpm("x", 10)]) for _ in range(8)))
        b = await asyncio.gather(*(other.acquire([rpm("x", 10)]) for _ in range(8)))
        assert sum(g.refusal is None for g in a + b) == 10
    finally:
        await other.stop()


async def test_redis_all_or_nothing_and_budget_settle(redis_store: RedisStore) -> None:
    assert (await redis_store.acquire([rpm("a", 1)])).refusal is None
    grant = await redis_store.acquire([budget("b", 100, 60), rpm("a", 1)])
    assert grant.refusal is not None and grant.refusal.charge.counter == "a"
    first = budget("b", 100, 60)
    assert (await redis_store.acquire([first])).refusal is None  # b was not reserved by the refused call
    assert (await redis_store.acquire([budget("b", 100, 60)])).refusal is not None
    redis_store.settle([Settlement(first, 30)])
    await redis_store.flush()
    assert (await redis_store.acquire([budget("b", 100, 60)])).refusal is None
    raw = await redis_store.client.call("HGETALL", redis_store.prefix + "b")
    assert dict(zip(raw[::2], map(int, raw[1::2]), strict=True)) == {b"s": 30, b"r": 60}


async def test_redis_settles_ledgers_nothing_was_reserved_on(redis_store: RedisStore) -> None:
    """Spend is counted in every ledger of the key and principal, reserved on or not (estimate 0)."""
    redis_store.settle([Settlement(budget("k", 0, 0), 25), Settlement(budget("k", 0, 0), 5)])
    await redis_store.flush()
    raw = await redis_store.client.call("HGETALL", redis_store.prefix + "k")
    assert raw == [b"s", b"30"]


async def test_redis_down_is_reported_not_raised() -> None:
    store = RedisStore("redis://127.0.0.1:1/0", prefix="x", timeout_s=0.2)
    grant = await store.acquire([rpm("a", 1)])
    assert grant.refusal is None and grant.error is not None and "Connection" in grant.error
    await store.stop()


# -- the pipeline when the store fails ---------------------------------------------------------------------


def _pipeline(on_store_error: str) -> tuple[Pipeline, Call, Router]:
    text = f"on_store_error: {on_store_error}\nrules:\n  - name: r\n    checks:\n      - {{type: rate_limit, rpm: 5}}\n"
    checks = registered_checks()
    store = RedisStore("redis://127.0.0.1:1/0", prefix="x", timeout_s=0.2)
    pipeline = Pipeline(parse_policy(text, checks), checks, store)
    call = Call(request_id="req_1", route="/v1/chat/completions")
    call.principal = Principal("key_1", "k", "team", frozenset({"app"}), ("*",))
    spec = RouterSpec.model_validate({"name": "echo", "deployments": [{"id": "a", "model": "openai/fake"}]})
    router = Router(spec, version=1, content_hash="0" * 64, adapters=None)  # type: ignore[arg-type]
    call.artifacts.append(router.ref)
    return pipeline, call, router


async def test_store_down_fails_open_with_an_error_decision() -> None:
    pipeline, call, router = _pipeline("allow")
    body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
    await pipeline.check_chat(call, router, body, body)
    (decision,) = call.decisions
    assert decision["verdict"] == "error" and decision["matched"].startswith("redis: ConnectionError")
    await pipeline.stop()


async def test_store_down_blocks_with_503_when_the_policy_says_so() -> None:
    pipeline, call, router = _pipeline("block")
    body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(OpsgateError) as err:
        await pipeline.check_chat(call, router, body, body)
    assert err.value.status == 503 and err.value.code == "limit_store_unavailable"
    await pipeline.stop()


async def test_a_dropped_connection_is_opened_again(redis_store: RedisStore) -> None:
    assert (await redis_store.acquire([rpm("a", 5)])).refusal is None
    own_id = await redis_store.client.call("CLIENT", "ID")
    with contextlib.suppress(RedisError):  # Redis may close before it answers
        await redis_store.client.call("CLIENT", "KILL", "ID", own_id, "SKIPME", "no")
    await asyncio.sleep(0.05)
    grants = [await redis_store.acquire([rpm("a", 5)]) for _ in range(3)]
    assert [g.error for g in grants if g.error] in ([], [grants[0].error])  # at most the first sees it
    assert (await redis_store.acquire([rpm("a", 5)])).error is None
    assert await redis_store.client.call("CLIENT", "ID") != own_id


async def test_a_silent_server_times_out_and_fails_the_call() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)  # accepts, never answers
    port = server.sockets[0].getsockname()[1]
    store = RedisStore(f"redis://127.0.0.1:{port}/0", prefix="x", timeout_s=0.2)
    grant = await store.acquire([rpm("a", 1)])
    assert grant.refusal is None and grant.error is not None and grant.error.startswith("TimeoutError")
    await store.stop()
    server.close()
