"""Attack: a caller's body picks the upstream host, credentials, headers, provider, region or a callback.

On the code before this check, `{"api_base": "http://attacker"}` in a chat body to a router served by
litellm made the gateway call the attacker with the provider's key (every body field but model/stream
became a litellm keyword argument). Every such field, top level or nested, through both adapters,
streaming or not, chat or embeddings, is now a 400 naming the field, and nothing reaches the attacker.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.fakes.gateway import GatewayProcess, assert_error
from tests.fakes.upstream import FakeUpstream
from tests.security.egress_fakes import (
    CANARY_ANTHROPIC,
    MESSAGES,
    Listener,
    app_key,
    assert_no_leak,
    attacker,
    egress_gateway,
    fake_anthropic,
)

__all__ = ["app_key", "attacker", "egress_gateway", "fake_anthropic"]  # fixtures

# Anthropic via litellm (at its default address, and at an allowed one), OpenAI-compatible direct and via litellm
CHAT_ROUTERS = ["claude-default", "claude", "direct", "viallm"]


def steering_fields(attacker_url: str) -> list[tuple[dict[str, Any], str, str]]:
    """(extra body fields, the field the 400 must name, its code)."""
    return [
        ({"api_base": attacker_url}, "api_base", "forbidden_parameter"),
        ({"base_url": attacker_url}, "base_url", "forbidden_parameter"),
        ({"api_key": "sk-attacker"}, "api_key", "forbidden_parameter"),
        ({"extra_headers": {"x-api-key": "sk-attacker"}}, "extra_headers", "forbidden_parameter"),
        ({"headers": {"Host": "attacker"}}, "headers", "forbidden_parameter"),
        ({"custom_llm_provider": "openai"}, "custom_llm_provider", "forbidden_parameter"),
        ({"aws_region_name": "eu-west-1"}, "aws_region_name", "forbidden_parameter"),
        ({"vertex_project": "p"}, "vertex_project", "forbidden_parameter"),
        ({"azure_ad_token": "t"}, "azure_ad_token", "forbidden_parameter"),
        ({"callbacks": ["langfuse"]}, "callbacks", "forbidden_parameter"),
        ({"success_callback": ["webhook"]}, "success_callback", "forbidden_parameter"),
        ({"langfuse_host": attacker_url}, "langfuse_host", "forbidden_parameter"),
        ({"s3_endpoint_url": attacker_url}, "s3_endpoint_url", "forbidden_parameter"),
        ({"litellm_logging_obj": {}}, "litellm_logging_obj", "forbidden_parameter"),
        ({"mock_response": "pwned"}, "mock_response", "forbidden_parameter"),
        ({"timeout": 0.001}, "timeout", "forbidden_parameter"),
        ({"num_retries": 50}, "num_retries", "forbidden_parameter"),
        ({"extra_body": {"api_base": attacker_url}}, "extra_body", "forbidden_parameter"),
        ({"Api_Base": attacker_url}, "Api_Base", "forbidden_parameter"),
        ({"frobnicate": 1}, "frobnicate", "unknown_parameter"),
        ({"top_k": 3}, "top_k", "unknown_parameter"),  # provider-specific: only when the operator allows it
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}, "api_base": attacker_url}}]},
            "tools.0.function.api_base",
            "forbidden_parameter",
        ),
        ({"tools": [{"type": "mcp", "server_url": attacker_url}]}, "tools.0.server_url", "forbidden_parameter"),
        ({"functions": [{"name": "f", "api_key": "x"}]}, "functions.0.api_key", "forbidden_parameter"),
        ({"metadata": {"api_base": {"url": attacker_url}}}, "metadata.api_base", "invalid_parameter"),
        ({"stream_options": {"include_usage": True, "api_base": attacker_url}}, "stream_options.api_base", "forbidden_parameter"),
    ]  # fmt: skip


def post(gw: GatewayProcess, path: str, body: dict[str, Any], key: str | None = None) -> httpx.Response:
    with gw.http() as http:
        return http.post(path, json=body, headers=gw.auth(key))


def test_legitimate_requests_take_the_litellm_anthropic_path(
    egress_gateway: GatewayProcess, fake_anthropic: Listener, attacker: Listener
) -> None:
    """The control: allowed OpenAI parameters pass, the key goes only to the allowed provider."""
    gw = egress_gateway
    body = {
        "model": "claude",
        "messages": MESSAGES,
        "temperature": 0.3,
        "max_tokens": 20,
        "user": "u-1",
        "metadata": {"ticket": "42"},
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
    }
    plain = post(gw, "/v1/chat/completions", body)
    assert plain.status_code == 200, plain.text
    assert plain.json()["choices"][0]["message"]["content"] == "hello from fake anthropic"
    streamed = post(gw, "/v1/chat/completions", {**body, "stream": True})
    assert streamed.status_code == 200 and "fake anthropic" in streamed.text
    seen = fake_anthropic.headers_seen()
    assert [h["x-api-key"] for h in seen[-2:]] == [CANARY_ANTHROPIC, CANARY_ANTHROPIC]
    assert all(r.path.endswith("/v1/messages") for r in fake_anthropic.received)
    assert_no_leak(gw, attacker, plain.text, streamed.text)


@pytest.mark.parametrize("router", CHAT_ROUTERS)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_caller_fields_that_steer_the_call_are_refused(
    egress_gateway: GatewayProcess,
    app_key: str,
    attacker: Listener,
    fake_anthropic: Listener,
    fake_upstream: FakeUpstream,
    router: str,
    stream: bool,
) -> None:
    gw = egress_gateway
    upstream_before = len(fake_upstream.requests)
    anthropic_before = len(fake_anthropic.received)
    texts = []
    for extra, param, code in steering_fields(attacker.url):
        body = {"model": router, "messages": MESSAGES, "stream": stream, **extra}
        r = post(gw, "/v1/chat/completions", body, app_key)
        assert_error(gw, r, 400, type_="invalid_request_error", code=code, param=param)
        assert param in r.json()["error"]["message"]
        texts.append(r.text)
    # refused before any upstream was called, allowed or not
    assert len(fake_upstream.requests) == upstream_before
    assert len(fake_anthropic.received) == anthropic_before
    assert_no_leak(gw, attacker, *texts)


@pytest.mark.parametrize("router", ["vectors", "vectorsllm"])
def test_embedding_fields_that_steer_the_call_are_refused(
    egress_gateway: GatewayProcess, app_key: str, attacker: Listener, router: str
) -> None:
    gw = egress_gateway
    cases = [
        ({"api_base": attacker.url}, "api_base", "forbidden_parameter"),
        ({"api_key": "sk-attacker"}, "api_key", "forbidden_parameter"),
        ({"extra_headers": {"x": "y"}}, "extra_headers", "forbidden_parameter"),
        ({"custom_llm_provider": "cohere"}, "custom_llm_provider", "forbidden_parameter"),
        ({"temperature": 0.2}, "temperature", "unknown_parameter"),  # a chat parameter, not an embeddings one
    ]
    texts = []
    for extra, param, code in cases:
        r = post(gw, "/v1/embeddings", {"model": router, "input": ["a b c"], **extra}, app_key)
        assert_error(gw, r, 400, type_="invalid_request_error", code=code, param=param)
        texts.append(r.text)
    ok = post(
        gw, "/v1/embeddings", {"model": router, "input": ["a b c"], "dimensions": 8, "user": "u"}, app_key
    )
    assert ok.status_code == 200, ok.text
    assert_no_leak(gw, attacker, *texts, ok.text)


def test_the_openai_client_extra_body_is_checked_like_the_body(
    egress_gateway: GatewayProcess, attacker: Listener
) -> None:
    """`extra_body` in the openai client merges into the JSON body: the same rules apply."""
    import openai

    client = egress_gateway.client()
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="claude",
            messages=MESSAGES,  # type: ignore[arg-type]
            extra_body={"api_base": attacker.url, "api_key": "sk-attacker"},
        )
    assert refused.value.body["param"] == "api_base"  # type: ignore[index]
    assert_no_leak(egress_gateway, attacker, str(refused.value))
