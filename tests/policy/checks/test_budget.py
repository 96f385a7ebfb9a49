"""Budgets under 50 concurrent requests: reserve before, settle after, and the overshoot stays within
the documented bound (gateway/policy/checks/budget.py): zero when max_tokens caps the answer, at most
(requests in flight) x (true cost - estimate) otherwise. In-process, and in Redis across two gateways."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import openai
import pytest

from gateway.tokens_cost import count_message_tokens
from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import GatewayProcess
from tests.fakes.upstream import FakeUpstream
from tests.policy.conftest import PRICE, make_key, routers

LIMIT = 0.0003
PROMPT = [{"role": "user", "content": "hello there"}]
PROMPT_TOKENS = count_message_tokens(PROMPT, "openai/fake")  # 9 (cl100k, OpenAI's framing), as upstream
ANSWER_TOKENS = 4  # "echo: hello there"
COST = (PROMPT_TOKENS + ANSWER_TOKENS) * PRICE


def policy(reserve_output_tokens: int) -> str:
    return f"""\
rules:
  - name: spend
    match: {{principals: [spender]}}
    checks:
      - {{type: budget, usd_per_day: {LIMIT}, reserve_output_tokens: {reserve_output_tokens}}}
"""


async def fire(clients: list[openai.AsyncOpenAI], n: int, **extra: Any) -> list[Any]:
    async def one(i: int) -> Any:
        try:
            return await clients[i % len(clients)].chat.completions.with_raw_response.create(
                model="slow", messages=PROMPT, **extra
            )
        except openai.RateLimitError as exc:
            return exc

    return await asyncio.gather(*(one(i) for i in range(n)))


def spent(gw: GatewayProcess, results: list[Any]) -> tuple[int, float]:
    ok = [r for r in results if not isinstance(r, openai.RateLimitError)]
    for r in results:
        if isinstance(r, openai.RateLimitError):
            assert r.code == "budget_exceeded"
    rows = gw.log_rows([r.headers["x-opsgate-request-id"] for r in ok])
    assert all(row["cost_usd"] == pytest.approx(COST) for row in rows.values())
    return len(ok), sum(row["cost_usd"] for row in rows.values())


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_capped_answers_never_overshoot(
    upstream: FakeUpstream, make_project: ProjectFactory, start_gateway: GatewayFactory, store: str
) -> None:
    """max_tokens=10 makes every estimate (9 + 10 tokens) cover the true cost (9 + 4): overshoot 0."""
    project = make_project(routers(upstream), files={"config/policies.yaml": policy(1024)})
    gateways = start_pair(project, start_gateway, store)
    key = make_key(gateways[0], "spender")
    for other in gateways[1:]:
        other.wait_for_key(key)
    clients = [g.async_client(api_key=key) for g in gateways]
    results = asyncio.run(fire(clients, 50, max_tokens=10))
    admitted, total = spent(gateways[0], results)
    assert admitted == int(LIMIT / ((PROMPT_TOKENS + 10) * PRICE) + 1e-9)  # 15: all in before any settles
    assert total <= LIMIT
    # once settled, the reservations are released and the true cost counted: room for more
    time.sleep(0.5)
    more = asyncio.run(fire([g.async_client(api_key=key) for g in gateways], 1, max_tokens=10))
    assert not isinstance(more[0], openai.RateLimitError)


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_uncapped_answers_overshoot_within_the_bound(
    upstream: FakeUpstream, make_project: ProjectFactory, start_gateway: GatewayFactory, store: str
) -> None:
    """No max_tokens and reserve_output_tokens=1: each estimate (9 + 1 tokens) undercounts the true cost
    (9 + 4) by 3 tokens' worth, so 50 in flight may overshoot by at most 50 x 3 x PRICE."""
    project = make_project(routers(upstream), files={"config/policies.yaml": policy(1)})
    gateways = start_pair(project, start_gateway, store)
    key = make_key(gateways[0], "spender")
    for other in gateways[1:]:
        other.wait_for_key(key)
    clients = [g.async_client(api_key=key) for g in gateways]
    results = asyncio.run(fire(clients, 50))
    admitted, total = spent(gateways[0], results)
    estimate = (PROMPT_TOKENS + 1) * PRICE
    assert admitted == int(LIMIT / estimate + 1e-9)  # 30
    bound = 50 * (COST - estimate)
    assert LIMIT < total <= LIMIT + bound  # it does overshoot, and within the bound


def start_pair(project: Any, start_gateway: GatewayFactory, store: str) -> list[GatewayProcess]:
    if store == "memory":
        return [start_gateway(project)]
    env = {
        "OPSGATE_REDIS_URL": "redis://127.0.0.1:6379/0",
        "OPSGATE_REDIS_PREFIX": f"t-{secrets.token_hex(6)}",
    }
    first = start_gateway(project, env=env)
    return [first, start_gateway(project, env=env, database_url=first.db_url())]
