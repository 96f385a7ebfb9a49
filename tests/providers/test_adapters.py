"""The two upstream adapters behave the same: usage, errors and their status, mid-stream failures, logs.

Every test runs on the direct OpenAI-compatible adapter (`adapter: openai`) and on the litellm adapter
(`adapter: litellm`), against the same fake upstream.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator
from typing import Any

import openai
import orjson
import pytest

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import FAST_GATEWAY_YAML, GatewayProcess, assert_error, deployment
from tests.fakes.upstream import RETRY_AFTER_S, FakeUpstream, count_tokens, fake_vector, prompt_tokens

ADAPTERS = ["openai", "litellm"]
UPSTREAM_KEY = "sk-upstream-secret-0123456789"
QUESTION = "hello world again"
MESSAGES = [{"role": "user", "content": QUESTION}]
ANSWER = f"echo: {QUESTION}"
USAGE = {
    "prompt_tokens": prompt_tokens(MESSAGES),
    "completion_tokens": count_tokens(ANSWER),
    "total_tokens": prompt_tokens(MESSAGES) + count_tokens(ANSWER),
}
# router name -> (fake upstream mode or "refused", deployment timeout)
FAILING = {
    "up-500": ("500", 30.0),
    "up-503": ("503", 30.0),
    "up-429": ("429", 30.0),
    "up-429-bare": ("429-bare", 30.0),
    "up-400": ("400", 30.0),
    "up-401": ("401", 30.0),
    "up-slow": ("slow-3000", 0.3),
    "up-reset": ("reset", 30.0),
    "up-refused": ("refused", 30.0),
}


def routers_for(up: FakeUpstream, adapter: str) -> dict[str, Any]:
    a = adapter

    def single(mode: str, **kw: Any) -> dict[str, Any]:
        base = up.refused_url if mode == "refused" else up.url(f"{mode}-{a}")
        return {"deployments": [deployment("only", base, adapter=a, **kw)]}

    routers: dict[str, Any] = {name: single(mode, timeout_s=t) for name, (mode, t) in FAILING.items()}
    routers["echo"] = single("ok")
    routers["nousage"] = single("nousage")
    routers["cut"] = single("cut-2")
    routers["errevent"] = single("errevent-2")
    routers["cut-then-fallback"] = {
        "deployments": [
            deployment("cuts", up.url(f"cut-1-fb-{a}"), adapter=a),
            deployment("spare", up.url(f"ok-cutfb-{a}"), adapter=a),
        ]
    }
    routers["priced"] = {
        "deployments": [deployment("mini", up.url(f"ok-priced-{a}"), adapter=a, model="openai/gpt-4o-mini")]
    }
    routers["vllm"] = {
        "deployments": [deployment("vllm", up.url(f"ok-vllm-{a}"), adapter=a, model="hosted_vllm/fake")]
    }
    routers["embed"] = {"kind": "embedding", **single("ok")}
    routers["drip"] = single("drip-300")
    routers["stall"] = single("drip-2000", timeout_s=0.5)
    routers["keyed"] = single("ok-keyed", api_key_env="FAKE_UPSTREAM_KEY")
    routers["unkeyed"] = single("ok-unkeyed", api_key_env="UNSET_TEST_API_KEY")
    return routers


@pytest.fixture(scope="module", params=ADAPTERS)
def gw(
    request: pytest.FixtureRequest,
    project_factory: ProjectFactory,
    gateway_factory: GatewayFactory,
    fake_upstream: FakeUpstream,
) -> Iterator[GatewayProcess]:
    project = project_factory(
        routers=routers_for(fake_upstream, request.param), files={"config/gateway.yaml": FAST_GATEWAY_YAML}
    )
    env = {"OPSGATE_TEST_ADAPTER": request.param, "FAKE_UPSTREAM_KEY": UPSTREAM_KEY}
    with gateway_factory(project, env=env) as gateway:
        yield gateway


@pytest.fixture
def adapter(gw: GatewayProcess) -> str:
    return gw.env["OPSGATE_TEST_ADAPTER"]


def usage_dict(usage: Any) -> dict[str, int]:
    return {k: getattr(usage, k) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}


# -- answers and usage ---------------------------------------------------------------------------------------


def test_plain_answer_usage_and_log_row(
    gw: GatewayProcess, fake_upstream: FakeUpstream, adapter: str
) -> None:
    raw = gw.client().chat.completions.with_raw_response.create(
        model="echo", messages=MESSAGES, max_tokens=50
    )  # type: ignore[arg-type]
    reply = raw.parse()
    assert reply.choices[0].message.content == ANSWER
    assert reply.choices[0].finish_reason == "stop"
    assert usage_dict(reply.usage) == USAGE
    sent = fake_upstream.hits(f"ok-{adapter}")[-1]
    assert sent["json"]["model"] == "fake"
    assert sent["json"]["messages"] == MESSAGES
    assert sent["json"]["max_tokens"] == 50
    assert not sent["json"].get("stream")
    row = gw.log_row(raw.headers["x-opsgate-request-id"])
    assert (row["tokens_in"], row["tokens_out"]) == (USAGE["prompt_tokens"], USAGE["completion_tokens"])
    assert row["upstream_model"] == "openai/fake"
    assert row["deployment"] == "only"
    assert row["status"] == 200
    assert row["stream"] is False
    assert row["ttft_ms"] is None
    assert 0 < row["upstream_ms"] <= row["latency_ms"]
    assert row["cost_usd"] is None  # openai/fake has no price


@pytest.mark.parametrize("include_usage", [False, True], ids=["no-usage", "include-usage"])
def test_stream_usage_only_when_asked(
    gw: GatewayProcess, fake_upstream: FakeUpstream, adapter: str, include_usage: bool
) -> None:
    extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if include_usage else {}
    with gw.client().chat.completions.with_streaming_response.create(
        model="echo",
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
        **extra,
    ) as response:
        request_id = response.headers["x-opsgate-request-id"]
        chunks = list(response.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    with_usage = [c for c in chunks if c.usage is not None]
    if include_usage:
        assert len(with_usage) == 1
        assert with_usage[0] is chunks[-1]
        assert chunks[-1].choices == []
        assert usage_dict(chunks[-1].usage) == USAGE
    else:
        assert with_usage == []
    # the gateway always asks the upstream for usage, for its log
    assert fake_upstream.hits(f"ok-{adapter}")[-1]["json"]["stream_options"] == {"include_usage": True}
    row = gw.log_row(request_id)
    assert (row["tokens_in"], row["tokens_out"]) == (USAGE["prompt_tokens"], USAGE["completion_tokens"])
    assert row["stream"] is True
    assert row["ttft_ms"] is not None
    assert 0 < row["ttft_ms"] <= row["latency_ms"]
    assert row["status"] == 200


def test_tokens_are_counted_when_the_upstream_sends_no_usage(gw: GatewayProcess, adapter: str) -> None:
    raw = gw.client().chat.completions.with_raw_response.create(model="nousage", messages=MESSAGES)  # type: ignore[arg-type]
    assert raw.parse().choices[0].message.content == ANSWER
    row = gw.log_row(raw.headers["x-opsgate-request-id"])
    assert (row["tokens_in"], row["tokens_out"]) == (USAGE["prompt_tokens"], USAGE["completion_tokens"])


def test_stream_tokens_are_counted_when_the_upstream_sends_no_usage(gw: GatewayProcess, adapter: str) -> None:
    with gw.client().chat.completions.with_streaming_response.create(
        model="nousage",
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    ) as response:
        request_id = response.headers["x-opsgate-request-id"]
        chunks = list(response.parse())
    assert usage_dict(chunks[-1].usage) == USAGE  # counted by the gateway, sent as OpenAI would
    row = gw.log_row(request_id)
    assert (row["tokens_in"], row["tokens_out"]) == (USAGE["prompt_tokens"], USAGE["completion_tokens"])


def test_hosted_vllm_model_string(gw: GatewayProcess, fake_upstream: FakeUpstream, adapter: str) -> None:
    reply = gw.client().chat.completions.create(model="vllm", messages=MESSAGES)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == ANSWER
    assert fake_upstream.hits(f"ok-vllm-{adapter}")[-1]["json"]["model"] == "fake"


def test_priced_model_costs_tokens_times_litellm_prices(gw: GatewayProcess, adapter: str) -> None:
    import litellm

    raw = gw.client().chat.completions.with_raw_response.create(model="priced", messages=MESSAGES)  # type: ignore[arg-type]
    row = gw.log_row(raw.headers["x-opsgate-request-id"])
    prompt_cost, completion_cost = litellm.cost_per_token(
        model="gpt-4o-mini",
        prompt_tokens=USAGE["prompt_tokens"],
        completion_tokens=USAGE["completion_tokens"],
    )
    assert row["cost_usd"] == pytest.approx(prompt_cost + completion_cost, rel=1e-9)
    assert row["cost_usd"] > 0
    assert row["upstream_model"] == "openai/gpt-4o-mini"


def test_the_upstream_key_comes_from_the_named_environment_variable(
    gw: GatewayProcess, fake_upstream: FakeUpstream, adapter: str
) -> None:
    raw = gw.client().chat.completions.with_raw_response.create(model="keyed", messages=MESSAGES)  # type: ignore[arg-type]
    assert raw.parse().choices[0].message.content == ANSWER
    assert (
        fake_upstream.hits(f"ok-keyed-{adapter}")[-1]["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"
    )
    row = gw.log_row(raw.headers["x-opsgate-request-id"])
    assert UPSTREAM_KEY not in str(row)
    with gw.http() as http:
        r = http.post(
            "/v1/chat/completions", json={"model": "unkeyed", "messages": MESSAGES}, headers=gw.auth()
        )
    assert_error(gw, r, 502, type_="upstream_error", code="upstream_key_missing")
    assert "UNSET_TEST_API_KEY" in r.json()["error"]["message"]
    assert fake_upstream.count(f"ok-unkeyed-{adapter}") == 0
    assert UPSTREAM_KEY not in gw.output()


# -- embeddings ------------------------------------------------------------------------------------------------


def test_embeddings_float_and_base64(gw: GatewayProcess, fake_upstream: FakeUpstream, adapter: str) -> None:
    texts = ["alpha", "beta"]
    floats = gw.client().embeddings.create(model="embed", input=texts, encoding_format="float")
    for item, text in zip(floats.data, texts, strict=True):
        assert item.embedding == pytest.approx(fake_vector(text))
    assert floats.usage.prompt_tokens == sum(count_tokens(t) for t in texts)
    with gw.http() as http:
        r = http.post(
            "/v1/embeddings",
            json={"model": "embed", "input": texts, "encoding_format": "base64"},
            headers=gw.auth(),
        )
    assert r.status_code == 200
    for item, text in zip(r.json()["data"], texts, strict=True):
        decoded = struct.unpack("<8f", base64.b64decode(item["embedding"]))
        assert decoded == pytest.approx(fake_vector(text), abs=1e-6)
    row = gw.log_row(r.headers["x-opsgate-request-id"])
    assert row["route"] == "/v1/embeddings"
    assert row["tokens_in"] == sum(count_tokens(t) for t in texts)


# -- errors --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(
    ("router", "status", "type_", "code"),
    [
        ("up-500", 502, "upstream_error", "upstream_error"),
        ("up-503", 502, "upstream_error", "upstream_error"),
        ("up-reset", 502, "upstream_error", "upstream_error"),
        ("up-401", 502, "upstream_error", "upstream_auth_failed"),
        ("up-refused", 503, "upstream_error", "upstream_unavailable"),
        ("up-slow", 504, "upstream_error", "upstream_timeout"),
        ("up-429", 429, "rate_limit_error", "upstream_rate_limited"),
        ("up-429-bare", 429, "rate_limit_error", "upstream_rate_limited"),
        ("up-400", 400, "invalid_request_error", "upstream_rejected"),
    ],
)
def test_upstream_failures_map_to_status(
    gw: GatewayProcess, adapter: str, router: str, status: int, type_: str, code: str, stream: bool
) -> None:
    with gw.http() as http:
        r = http.post(
            "/v1/chat/completions",
            json={"model": router, "messages": MESSAGES, "stream": stream},
            headers=gw.auth(),
        )
    row = assert_error(gw, r, status, type_=type_, code=code)
    assert r.headers["x-opsgate-versions"].startswith(f"router:{router}@")
    assert row["artifacts"] == [r.headers["x-opsgate-versions"]]
    assert row["deployment"] == "only"
    assert row["upstream_model"] == "openai/fake"
    assert [(a["deployment"], a["ok"]) for a in row["attempts"]] == [("only", False)]
    assert row["stream"] is stream
    if router == "up-429":
        assert r.headers["retry-after"] == str(RETRY_AFTER_S)  # the upstream's own
    if router == "up-429-bare":
        assert r.headers["retry-after"] == "1"  # the upstream gave none: a 429 still says when


# -- mid-stream failures --------------------------------------------------------------------------------------


def row_deployment(router: str) -> str:
    return "cuts" if router == "cut-then-fallback" else "only"


def stream_until_error(gw: GatewayProcess, model: str) -> tuple[list[Any], str, openai.APIError]:
    chunks: list[Any] = []
    seen: dict[str, str] = {}
    with (
        pytest.raises(openai.APIError) as exc,
        gw.client().chat.completions.with_streaming_response.create(
            model=model,
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
        ) as response,
    ):
        seen["id"] = response.headers["x-opsgate-request-id"]
        assert response.status_code == 200
        chunks.extend(response.parse())
    return chunks, seen["id"], exc.value


@pytest.mark.parametrize(("router", "words"), [("cut", 2), ("errevent", 2), ("cut-then-fallback", 1)])
def test_mid_stream_failure_ends_with_an_error_not_a_clean_end(
    gw: GatewayProcess, fake_upstream: FakeUpstream, adapter: str, router: str, words: int
) -> None:
    chunks, request_id, error = stream_until_error(gw, router)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == " ".join(ANSWER.split(" ")[:words])
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["error"]
    assert error.message.startswith(f"deployment {row_deployment(router)!r} ")
    assert error.body["type"] == "upstream_error"  # type: ignore[index]
    row = gw.log_row(request_id)
    assert row["status"] == 502
    assert row["error_type"] == "upstream_error"
    assert row["error_message"] == error.message
    assert row["stream"] is True
    assert row["ttft_ms"] is not None
    assert row["tokens_out"] == count_tokens(text)
    if router == "cut-then-fallback":  # after the first chunk there is no falling back
        assert fake_upstream.count(f"ok-cutfb-{adapter}") == 0
        # the cut is the deployment's failure (issue 13): its attempt is logged failed
        assert [(a["deployment"], a["ok"]) for a in row["attempts"]] == [("cuts", False)]


def test_a_stream_that_stalls_mid_way_times_out(gw: GatewayProcess, adapter: str) -> None:
    chunks, request_id, error = stream_until_error(gw, "stall")
    assert [c.choices[0].delta.role for c in chunks if c.choices][:1] == ["assistant"]
    assert error.body["code"] == "upstream_timeout"  # type: ignore[index]
    row = gw.log_row(request_id)
    assert (row["status"], row["error_type"]) == (504, "upstream_timeout")
    assert row["latency_ms"] < 1900  # gave up after the 0.5 s read timeout, not after the 2 s stall


@pytest.mark.parametrize("router", ["cut", "errevent"])
def test_mid_stream_failure_on_the_wire(gw: GatewayProcess, adapter: str, router: str) -> None:
    body = {"model": router, "messages": MESSAGES, "stream": True}
    with gw.http() as http, http.stream("POST", "/v1/chat/completions", json=body, headers=gw.auth()) as r:
        assert r.status_code == 200
        events = [line for line in r.iter_lines() if line]
    assert "data: [DONE]" not in events
    last = orjson.loads(events[-1].removeprefix("data: "))
    assert set(last["error"]) == {"message", "type", "param", "code"}
    assert last["error"]["type"] == "upstream_error"
    before = orjson.loads(events[-2].removeprefix("data: "))
    assert before["choices"][0]["finish_reason"] == "error"


def test_a_client_that_goes_away_mid_stream_is_logged(
    gw: GatewayProcess, fake_upstream: FakeUpstream, adapter: str
) -> None:
    body = {"model": "drip", "messages": [{"role": "user", "content": "one two three four five six"}]}
    with (
        gw.http() as http,
        http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}, headers=gw.auth()) as r,
    ):
        request_id = r.headers["x-opsgate-request-id"]
        first = next(r.iter_lines())
        assert first.startswith("data: ")
    row = gw.log_row(request_id)
    assert row["status"] == 499
    assert row["error_type"] == "client_closed"
    assert row["stream"] is True
    assert row["deployment"] == "only"
