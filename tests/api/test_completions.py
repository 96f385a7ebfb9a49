"""Legacy completions (`/v1/completions`) through the official `openai` client against the real server:
plain, echo, streaming (with usage), async, stored, and refusals of what the chat bridge cannot honour."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import FAST_GATEWAY_YAML, GatewayProcess, deployment
from tests.fakes.upstream import FakeUpstream, count_tokens


@pytest.fixture(scope="module")
def gw(
    project_factory: ProjectFactory, gateway_factory: GatewayFactory, fake_upstream: FakeUpstream
) -> Iterator[GatewayProcess]:
    routers: dict[str, Any] = {"echo": {"deployments": [deployment("up", fake_upstream.url("ok"))]}}
    project = project_factory(routers=routers, files={"config/gateway.yaml": FAST_GATEWAY_YAML})
    with gateway_factory(project) as gateway:
        yield gateway


def strict(gw: GatewayProcess) -> openai.OpenAI:
    return gw.client(_strict_response_validation=True)


def test_plain_completion_with_every_parameter(gw: GatewayProcess, fake_upstream: FakeUpstream) -> None:
    raw = strict(gw).completions.with_raw_response.create(
        model="echo",
        prompt="Say hello",
        max_tokens=20,
        temperature=0.5,
        top_p=0.9,
        n=1,
        stop=["\n\n"],
        presence_penalty=0.1,
        frequency_penalty=0.2,
        seed=7,
        user="u1",
        logit_bias={"50256": -100},
        best_of=1,
        echo=False,
    )
    done = raw.parse()
    request_id = raw.headers["x-opsgate-request-id"]
    assert done.object == "text_completion"
    assert done.id == "cmpl-" + request_id.removeprefix("req_")
    assert done.choices[0].text == "echo: Say hello"
    assert done.choices[0].finish_reason == "stop"
    assert done.usage is not None and done.usage.completion_tokens == count_tokens("echo: Say hello")
    sent = fake_upstream.hits(endpoint="chat/completions")[-1]["json"]
    assert sent["messages"] == [{"role": "user", "content": "Say hello"}]
    assert (sent["max_tokens"], sent["seed"], sent["stop"], sent["user"]) == (20, 7, ["\n\n"], "u1")
    assert "echo" not in sent and "best_of" not in sent and "prompt" not in sent
    row = gw.log_row(request_id)
    assert row["route"] == "/v1/completions" and row["status"] == 200
    assert row["artifacts"][0].startswith("router:echo@")
    assert gw.count_rows(request_id) == 1


def test_echo_prepends_the_prompt(gw: GatewayProcess) -> None:
    done = strict(gw).completions.create(model="echo", prompt=["Repeat"], echo=True)
    assert done.choices[0].text == "Repeatecho: Repeat"


def test_stream_with_usage(gw: GatewayProcess) -> None:
    # the SDK types a chunk's finish_reason as never null, while the API (OpenAI's too) sends null until
    # the last text chunk: streams are read without strict validation
    chunks = list(
        gw.client().completions.create(
            model="echo", prompt="one two three", stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == "echo: one two three"
    assert {c.object for c in chunks} == {"text_completion"}
    assert len({c.id for c in chunks}) == 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == count_tokens(text)


async def test_async_stream(gw: GatewayProcess) -> None:
    client = gw.async_client()
    stream = await client.completions.create(model="echo", prompt="async words", stream=True)
    text = "".join([c.choices[0].text async for c in stream if c.choices])
    assert text == "echo: async words"


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"prompt": "x", "logprobs": 2}, "logprobs", "unsupported_parameter"),
        ({"prompt": "x", "suffix": "end"}, "suffix", "unsupported_parameter"),
        ({"prompt": "x", "best_of": 3}, "best_of", "unsupported_parameter"),
        ({"prompt": ["a", "b"]}, "prompt", "unsupported_parameter"),
        ({"prompt": "x", "api_base": "http://evil"}, "api_base", "unknown_parameter"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens", "integer_below_min_value"),
        ({}, "prompt", "missing_required_parameter"),
    ],
)
def test_what_the_bridge_cannot_honour_is_a_400(
    gw: GatewayProcess, body: dict[str, Any], param: str, code: str
) -> None:
    with gw.http() as http:
        r = http.post("/v1/completions", headers=gw.auth(), json={"model": "echo", **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    assert gw.count_rows(r.headers["x-opsgate-request-id"]) == 1 or gw.log_row(
        r.headers["x-opsgate-request-id"]
    )


def test_stored_completion_is_kept_in_its_own_shape(gw: GatewayProcess) -> None:
    done = strict(gw).completions.create(model="echo", prompt="keep me", extra_body={"store": True})
    from sqlalchemy import text

    with gw._db().connect() as conn:
        kind, payload = conn.execute(
            text("select kind, payload from traffic_calls where id = :id"), {"id": done.id}
        ).one()
    assert kind == "text_completion"
    assert '"text_completion"' in str(payload) and "echo: keep me" in str(payload)
