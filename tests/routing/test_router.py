"""Routing against the fake upstream: fallbacks, retries, weights, cooldown, non-retryable errors.

Every test runs twice, once with deployments on the direct OpenAI-compatible adapter and once on the
litellm adapter (`adapter: litellm`): both must behave the same. Each test has routers of its own (mode
tags keep their upstream records apart), so deployment health never leaks between tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import FAST_GATEWAY_YAML, GatewayProcess, deployment
from tests.fakes.upstream import FakeUpstream

ADAPTERS = ["openai", "litellm"]
FAULTS = ["500", "429", "timeout", "refused", "reset"]
LOOPS = 20
SLOW_MS = 3000
TIMEOUT_S = 0.5


def broken_base(up: FakeUpstream, fault: str, tag: str) -> str:
    if fault == "refused":
        return up.refused_url
    if fault == "timeout":
        return up.url(f"slow-{SLOW_MS}-{tag}")
    return up.url(f"{fault}-{tag}")


def routers_for(up: FakeUpstream, adapter: str) -> dict[str, Any]:
    a = adapter
    routers: dict[str, Any] = {}
    for fault in FAULTS:
        for kind in ("plain", "stream"):
            tag = f"{a}-{kind}"
            routers[f"fb-{fault}-{kind}"] = {
                "deployments": [
                    deployment("broken", broken_base(up, fault, tag), adapter=a, timeout_s=TIMEOUT_S),
                    deployment("healthy", up.url(f"ok-{fault}-{tag}"), adapter=a),
                ]
            }
    for kind in ("plain", "stream"):
        routers[f"retry-{kind}"] = {
            "retries": 2,
            "deployments": [
                deployment("flaky", up.url(f"flaky-2-{a}-{kind}"), adapter=a),
                deployment("spare", up.url(f"ok-spare-{a}-{kind}"), adapter=a),
            ],
        }
        routers[f"exhaust-{kind}"] = {
            "retries": 1,
            "deployments": [
                deployment("flaky", up.url(f"flaky-9-{a}-{kind}"), adapter=a),
                deployment("spare", up.url(f"ok-exhaust-{a}-{kind}"), adapter=a),
            ],
        }
        routers[f"reject-{kind}"] = {
            "retries": 2,
            "deployments": [
                deployment("picky", up.url(f"400-{a}-{kind}"), adapter=a),
                deployment("spare", up.url(f"ok-reject-{a}-{kind}"), adapter=a),
            ],
        }
    routers["override"] = {
        "retries": 0,
        "deployments": [
            deployment("flaky", up.url(f"flaky-1-override-{a}"), adapter=a, retries=1),
            deployment("spare", up.url(f"ok-override-{a}"), adapter=a),
        ],
    }
    routers["weighted"] = {
        "strategy": {"type": "weighted"},
        "deployments": [
            deployment("heavy", up.url(f"ok-heavy-{a}"), adapter=a, weight=3),
            deployment("light", up.url(f"ok-light-{a}"), adapter=a, weight=1),
        ],
    }
    routers["weighted-fallback"] = {
        "strategy": {"type": "weighted"},
        "deployments": [
            deployment("broken", up.url(f"500-wf-{a}"), adapter=a, weight=1),
            deployment("heavy", up.url(f"ok-wf-heavy-{a}"), adapter=a, weight=5),
        ],
    }
    routers["cooldown"] = {
        "cooldown_s": 1.0,
        "deployments": [
            deployment("broken", up.url(f"500-cool-{a}"), adapter=a),
            deployment("healthy", up.url(f"ok-cool-{a}"), adapter=a),
        ],
    }
    routers["allowed-fails"] = {
        "allowed_fails": 2,
        "deployments": [
            deployment("broken", up.url(f"500-af-{a}"), adapter=a),
            deployment("healthy", up.url(f"ok-af-{a}"), adapter=a),
        ],
    }
    routers["all-broken"] = {
        "deployments": [
            deployment("one", up.url(f"500-all1-{a}"), adapter=a),
            deployment("two", up.url(f"503-all2-{a}"), adapter=a),
        ],
    }
    return routers


@pytest.fixture(scope="module", params=ADAPTERS)
def gw(
    request: pytest.FixtureRequest,
    project_factory: ProjectFactory,
    gateway_factory: GatewayFactory,
    fake_upstream: FakeUpstream,
) -> Iterator[GatewayProcess]:
    adapter: str = request.param
    project = project_factory(
        routers=routers_for(fake_upstream, adapter), files={"config/gateway.yaml": FAST_GATEWAY_YAML}
    )
    with gateway_factory(project, env={"OPSGATE_TEST_ADAPTER": adapter}) as gateway:
        yield gateway


@pytest.fixture
def adapter(gw: GatewayProcess) -> str:
    return gw.env["OPSGATE_TEST_ADAPTER"]


def ask(gw: GatewayProcess, model: str, text: str, *, stream: bool) -> tuple[str, str, str | None]:
    """(answer text, request id, finish reason) through the official client."""
    client = gw.client()
    messages = [{"role": "user", "content": text}]
    if not stream:
        raw = client.chat.completions.with_raw_response.create(model=model, messages=messages)  # type: ignore[arg-type]
        reply = raw.parse()
        return (
            reply.choices[0].message.content or "",
            raw.headers["x-opsgate-request-id"],
            reply.choices[0].finish_reason,
        )
    with client.chat.completions.with_streaming_response.create(
        model=model,
        messages=messages,
        stream=True,  # type: ignore[arg-type]
    ) as response:
        request_id = response.headers["x-opsgate-request-id"]
        chunks = list(response.parse())
    text_out = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    return text_out, request_id, finishes[-1] if finishes else None


def attempts_of(row: dict[str, Any]) -> list[tuple[str, bool]]:
    return [(a["deployment"], a["ok"]) for a in row["attempts"]]


# -- fallback before the first byte ------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("fault", FAULTS)
def test_fallback_survives_a_broken_first_deployment(
    gw: GatewayProcess, fake_upstream: FakeUpstream, adapter: str, fault: str, stream: bool
) -> None:
    kind = "stream" if stream else "plain"
    tag = f"{adapter}-{kind}"
    ids = []
    for i in range(LOOPS):
        text, request_id, finish = ask(gw, f"fb-{fault}-{kind}", f"question {i}", stream=stream)
        assert text == f"echo: question {i}"
        assert finish == "stop"
        ids.append(request_id)
    rows = gw.log_rows(ids)
    first, rest = rows[ids[0]], [rows[i] for i in ids[1:]]
    # the broken deployment was tried once, then cooled down: never retried while the healthy one works
    assert attempts_of(first) == [("broken", False), ("healthy", True)]
    assert all(attempts_of(r) == [("healthy", True)] for r in rest)
    assert all(r["status"] == 200 and r["deployment"] == "healthy" for r in rows.values())
    if fault != "refused":
        broken_mode = f"slow-{SLOW_MS}-{tag}" if fault == "timeout" else f"{fault}-{tag}"
        assert fake_upstream.count(broken_mode) == 1
    assert fake_upstream.count(f"ok-{fault}-{tag}") == LOOPS
    if fault == "timeout":
        assert first["attempts"][0]["ms"] >= TIMEOUT_S * 1000 * 0.9
        assert first["attempts"][0]["ms"] < SLOW_MS / 2


def test_every_deployment_failing_reports_the_last_error(gw: GatewayProcess, adapter: str) -> None:
    with pytest.raises(openai.APIStatusError) as exc:
        gw.client().chat.completions.create(model="all-broken", messages=[{"role": "user", "content": "x"}])
    assert exc.value.status_code == 502
    assert "after 2 attempt(s) on one, two" in exc.value.message
    request_id = exc.value.response.headers["x-opsgate-request-id"]
    row = gw.log_row(request_id)
    assert attempts_of(row) == [("one", False), ("two", False)]
    assert [a.get("status") for a in row["attempts"]] == [500, 503]
    assert row["deployment"] == "two"
    assert row["status"] == 502


# -- retries -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_retries_stay_on_the_same_deployment(
    gw: GatewayProcess, fake_upstream: FakeUpstream, adapter: str, stream: bool
) -> None:
    kind = "stream" if stream else "plain"
    text, request_id, _ = ask(gw, f"retry-{kind}", "again", stream=stream)
    assert text == "echo: again"
    assert fake_upstream.count(f"flaky-2-{adapter}-{kind}") == 3
    assert fake_upstream.count(f"ok-spare-{adapter}-{kind}") == 0
    row = gw.log_row(request_id)
    assert attempts_of(row) == [("flaky", False), ("flaky", False), ("flaky", True)]
    assert row["deployment"] == "flaky"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_retries_exhausted_move_to_the_next_deployment(
    gw: GatewayProcess, fake_upstream: FakeUpstream, adapter: str, stream: bool
) -> None:
    kind = "stream" if stream else "plain"
    text, request_id, _ = ask(gw, f"exhaust-{kind}", "more", stream=stream)
    assert text == "echo: more"
    assert fake_upstream.count(f"flaky-9-{adapter}-{kind}") == 2
    assert fake_upstream.count(f"ok-exhaust-{adapter}-{kind}") == 1
    assert attempts_of(gw.log_row(request_id)) == [("flaky", False), ("flaky", False), ("spare", True)]


def test_deployment_retries_override_the_router(
    gw: GatewayProcess, fake_upstream: FakeUpstream, adapter: str
) -> None:
    text, request_id, _ = ask(gw, "override", "mine", stream=False)
    assert text == "echo: mine"
    assert attempts_of(gw.log_row(request_id)) == [("flaky", False), ("flaky", True)]
    assert fake_upstream.count(f"ok-override-{adapter}") == 0


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_rejected_request_is_not_retried_and_reaches_the_client_as_400(
    gw: GatewayProcess, fake_upstream: FakeUpstream, adapter: str, stream: bool
) -> None:
    kind = "stream" if stream else "plain"
    with pytest.raises(openai.BadRequestError) as exc:
        ask(gw, f"reject-{kind}", "bad", stream=stream)
    assert exc.value.status_code == 400
    assert exc.value.code == "upstream_rejected"
    assert "HTTP 400" in exc.value.message
    assert fake_upstream.count(f"400-{adapter}-{kind}") == 1
    assert fake_upstream.count(f"ok-reject-{adapter}-{kind}") == 0
    row = gw.log_row(exc.value.response.headers["x-opsgate-request-id"])
    assert attempts_of(row) == [("picky", False)]
    assert row["status"] == 400
    assert row["error_type"] == "upstream_rejected"


# -- weights and cooldown ----------------------------------------------------------------------------------


async def test_weighted_choice_follows_the_weights(
    gw: GatewayProcess, fake_upstream: FakeUpstream, adapter: str
) -> None:
    n = 240
    gate = asyncio.Semaphore(8)
    async with gw.async_client() as client:

        async def one(i: int) -> None:
            async with gate:
                reply = await client.chat.completions.create(
                    model="weighted", messages=[{"role": "user", "content": f"w{i}"}]
                )
                assert reply.choices[0].message.content == f"echo: w{i}"

        await asyncio.gather(*(one(i) for i in range(n)))
    heavy, light = fake_upstream.count(f"ok-heavy-{adapter}"), fake_upstream.count(f"ok-light-{adapter}")
    assert heavy + light == n
    # expected share 0.75; its standard deviation over 240 draws is 0.028, so +-0.09 is a 3.2-sigma band
    assert abs(heavy / n - 0.75) < 0.09, (heavy, light)


def test_weighted_falls_back_by_weight_and_cools_down(
    gw: GatewayProcess, fake_upstream: FakeUpstream, adapter: str
) -> None:
    for i in range(LOOPS):
        text, _, _ = ask(gw, "weighted-fallback", f"x{i}", stream=False)
        assert text == f"echo: x{i}"
    # the broken deployment (weight 1 of 6) may be drawn first; once it failed it is cooling down
    assert fake_upstream.count(f"500-wf-{adapter}") <= 1
    assert fake_upstream.count(f"ok-wf-heavy-{adapter}") == LOOPS


def test_cooldown_expires_and_the_deployment_is_tried_again(
    gw: GatewayProcess, fake_upstream: FakeUpstream, adapter: str
) -> None:
    import time

    broken = f"500-cool-{adapter}"
    ask(gw, "cooldown", "a", stream=False)
    assert fake_upstream.count(broken) == 1
    for i in range(5):
        ask(gw, "cooldown", f"b{i}", stream=False)
    assert fake_upstream.count(broken) == 1  # cooling down for 1 s
    time.sleep(1.1)
    text, _, _ = ask(gw, "cooldown", "c", stream=False)
    assert text == "echo: c"
    assert fake_upstream.count(broken) == 2  # tried again once the cooldown expired, and failed over


def test_allowed_fails_delays_the_cooldown(
    gw: GatewayProcess, fake_upstream: FakeUpstream, adapter: str
) -> None:
    for i in range(6):
        assert ask(gw, "allowed-fails", f"f{i}", stream=False)[0] == f"echo: f{i}"
    assert fake_upstream.count(f"500-af-{adapter}") == 2
    assert fake_upstream.count(f"ok-af-{adapter}") == 6
