"""Attack: a caller hides keys in the nested objects of a request, on every API surface, so that they reach
the upstream (or would steer a client that reads them).

On the code before this check, the top level of every body was on an allow-list, but inside, only
`metadata`, `tools`, `functions` and `stream_options` were looked into: `tool_choice`, `response_format`
(and its `json_schema`), `web_search_options`, `prediction`, `audio` and `thinking` went upstream with
whatever keys a caller put there (`{"tool_choice": {..., "function": {"name": "f", "api_base": ...}}}`
arrived at the provider as sent). A Responses API call to a deployment serving it natively
(`responses: native`) was worse: its input items, content parts, tools and tool choice were passed through
untouched, keys and all (the chat bridge dropped the same keys silently). Now each nested object holds its
documented keys only, on chat, Responses (bridged or native), Messages and completions alike: anything
else is a 400 naming the field, and nothing is sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import GatewayProcess, assert_error, deployment
from tests.fakes.upstream import FakeUpstream
from tests.security.egress_fakes import (
    CANARY_ENV,
    MESSAGES,
    Listener,
    assert_no_leak,
    attacker,
    fake_anthropic,
    gateway_yaml,
    routers,
)

__all__ = ["attacker", "fake_anthropic"]  # fixtures


@pytest.fixture(scope="module")
def gw(
    project_factory: ProjectFactory,
    gateway_factory: GatewayFactory,
    fake_upstream: FakeUpstream,
    fake_anthropic: Listener,
) -> Iterator[GatewayProcess]:
    """The egress routers, plus deployments that serve the Responses API natively (direct adapter)."""
    spec = routers(fake_anthropic, fake_upstream)
    spec["native"] = {
        "deployments": [
            deployment("nat", fake_upstream.url("ok-sec-native"), adapter="openai", responses="native")
        ]
    }
    project = project_factory(
        routers=spec, files={"config/gateway.yaml": gateway_yaml(fake_anthropic, fake_upstream)}
    )
    with gateway_factory(project, env=CANARY_ENV) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def app_key(gw: GatewayProcess) -> str:
    made = gw.cli("keys", "create", "--name", "attacker-app", "--role", "app", key=gw.admin_key)
    key = made.stdout.strip().splitlines()[-1]
    gw.wait_for_key(key)
    return key


def post(gw: GatewayProcess, path: str, body: dict[str, Any], key: str) -> httpx.Response:
    with gw.http() as http:
        return http.post(path, json=body, headers=gw.auth(key))


def chat_cases(url: str) -> list[tuple[dict[str, Any], str, str]]:
    """(extra chat body fields, the field the 400 must name, its code)."""
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    return [
        ({"tools": [tool], "tool_choice": {"type": "function", "function": {"name": "f", "api_base": url}}},
         "tool_choice.function.api_base", "forbidden_parameter"),
        ({"tools": [tool], "tool_choice": {"type": "function", "function": {"name": "f"}, "extra_headers": {}}},
         "tool_choice.extra_headers", "forbidden_parameter"),
        ({"tools": [tool], "tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [
            {"type": "function", "function": {"name": "f", "api_key": "x"}}]}}},
         "tool_choice.allowed_tools.tools.0.function.api_key", "forbidden_parameter"),
        ({"functions": [{"name": "f"}], "function_call": {"name": "f", "base_url": url}},
         "function_call.base_url", "forbidden_parameter"),
        ({"response_format": {"type": "json_object", "api_base": url}}, "response_format.api_base", "forbidden_parameter"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}, "headers": {"h": "v"}}}},
         "response_format.json_schema.headers", "forbidden_parameter"),
        ({"web_search_options": {"user_location": {"type": "approximate", "approximate": {"city": "x", "base_url": url}}}},
         "web_search_options.user_location.approximate.base_url", "forbidden_parameter"),
        ({"prediction": {"type": "content", "content": "x", "api_base": url}}, "prediction.api_base", "forbidden_parameter"),
        ({"audio": {"voice": "alloy", "format": "wav", "api_key": "x"}}, "audio.api_key", "forbidden_parameter"),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024, "custom_llm_provider": "openai"}},
         "thinking.custom_llm_provider", "forbidden_parameter"),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024, "frobnicate": 1}}, "thinking.frobnicate", "unknown_parameter"),
    ]  # fmt: skip


def responses_cases(url: str) -> list[tuple[dict[str, Any], str, str]]:
    """(Responses body fields beside model, the field the 400 must name, its code)."""
    fn = {"type": "function", "name": "f", "parameters": {"type": "object"}}
    return [
        ({"input": "hi", "tools": [{**fn, "api_base": url}]}, "tools.0.api_base", "forbidden_parameter"),
        ({"input": "hi", "tools": [{"type": "mcp", "server_url": url}]}, "tools.0.server_url", "forbidden_parameter"),
        ({"input": [{"type": "message", "role": "user", "content": "hi", "extra_headers": {"x": "y"}}]},
         "input.0.extra_headers", "forbidden_parameter"),
        ({"input": [{"role": "user", "content": [{"type": "input_text", "text": "hi", "api_base": url}]}]},
         "input.0.content.0.api_base", "forbidden_parameter"),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
                    {"type": "function_call_output", "call_id": "c", "output": "x", "headers": {"h": "v"}}],
          "tools": [fn]},
         "input.1.headers", "forbidden_parameter"),
        ({"input": "hi", "tools": [fn], "tool_choice": {"type": "function", "name": "f", "api_key": "x"}},
         "tool_choice.api_key", "forbidden_parameter"),
        ({"input": [{"type": "reasoning", "summary": [], "encrypted_content": "x"}]}, "input.0.type", "invalid_parameter"),
        ({"input": "hi", "api_base": url}, "api_base", "forbidden_parameter"),
    ]  # fmt: skip


@pytest.mark.parametrize("router", ["direct", "viallm", "claude"])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_chat_nested_objects_hold_their_own_keys_only(
    gw: GatewayProcess,
    app_key: str,
    attacker: Listener,
    fake_anthropic: Listener,
    fake_upstream: FakeUpstream,
    router: str,
    stream: bool,
) -> None:
    upstream_before, anthropic_before = len(fake_upstream.requests), len(fake_anthropic.received)
    texts = []
    for extra, param, code in chat_cases(attacker.url):
        r = post(
            gw,
            "/v1/chat/completions",
            {"model": router, "messages": MESSAGES, "stream": stream, **extra},
            app_key,
        )
        assert_error(gw, r, 400, type_="invalid_request_error", code=code, param=param)
        texts.append(r.text)
    assert len(fake_upstream.requests) == upstream_before
    assert len(fake_anthropic.received) == anthropic_before
    assert_no_leak(gw, attacker, *texts)


@pytest.mark.parametrize("router", ["native", "direct"])
def test_responses_items_tools_and_choices_hold_their_own_keys_only(
    gw: GatewayProcess, app_key: str, attacker: Listener, fake_upstream: FakeUpstream, router: str
) -> None:
    """Natively served (the body goes upstream as it is) or bridged (the keys would be dropped): refused."""
    before = len(fake_upstream.requests)
    texts = []
    for fields, param, code in responses_cases(attacker.url):
        r = post(gw, "/v1/responses", {"model": router, **fields}, app_key)
        assert_error(gw, r, 400, type_="invalid_request_error", code=code, param=param)
        texts.append(r.text)
    assert len(fake_upstream.requests) == before
    assert_no_leak(gw, attacker, *texts)


def test_messages_thinking_and_completions_options_hold_their_own_keys_only(
    gw: GatewayProcess, app_key: str, attacker: Listener, fake_anthropic: Listener
) -> None:
    before = len(fake_anthropic.received)
    thinking = {"type": "enabled", "budget_tokens": 1024, "api_base": attacker.url}
    r = post(
        gw,
        "/v1/messages",
        {"model": "claude", "max_tokens": 2048, "messages": MESSAGES, "thinking": thinking},
        app_key,
    )
    assert r.status_code == 400 and "thinking.api_base" in r.text, r.text
    assert gw.log_row(r.headers["x-opsgate-request-id"])["status"] == 400
    options = {"include_usage": True, "api_base": attacker.url}
    r2 = post(
        gw,
        "/v1/completions",
        {"model": "direct", "prompt": "hi", "stream": True, "stream_options": options},
        app_key,
    )
    assert_error(
        gw,
        r2,
        400,
        type_="invalid_request_error",
        code="forbidden_parameter",
        param="stream_options.api_base",
    )
    assert len(fake_anthropic.received) == before
    assert_no_leak(gw, attacker, r.text, r2.text)


def test_documented_nested_keys_still_pass(
    gw: GatewayProcess, app_key: str, attacker: Listener, fake_upstream: FakeUpstream
) -> None:
    """The control: what OpenAI documents (items replayed with their ids and status, annotations, strict
    tools, a named tool choice, json_schema formats, web search locations) still reaches the upstream."""
    fn = {
        "type": "function",
        "name": "lookup",
        "description": "d",
        "parameters": {"type": "object"},
        "strict": True,
    }
    body = {
        "model": "native",
        "input": [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
            {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
             "content": [{"type": "output_text", "text": "hello", "annotations": [], "logprobs": []}]},
            {"type": "message", "role": "user", "content": "and now?"},
        ],
        "tools": [fn],
        "tool_choice": {"type": "function", "name": "lookup"},
        "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}, "strict": True}},
        "reasoning": {"effort": "low"},
        "metadata": {"ticket": "42"},
    }  # fmt: skip
    before = len(fake_upstream.requests)
    r = post(gw, "/v1/responses", body, app_key)
    assert r.status_code == 200, r.text
    sent = fake_upstream.requests[before]["json"]
    assert sent["tools"] == [fn] and sent["input"] == body["input"]
    chat = {
        "model": "direct",
        "messages": MESSAGES,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}, "strict": True}},
        "web_search_options": {"search_context_size": "low", "user_location": {"type": "approximate", "approximate": {"city": "Paris"}}},
    }  # fmt: skip
    r2 = post(gw, "/v1/chat/completions", chat, app_key)
    assert r2.status_code == 200, r2.text
    assert_no_leak(gw, attacker, r.text, r2.text)


def test_headers_the_caller_sends_are_not_forwarded_and_steer_nothing(
    gw: GatewayProcess,
    app_key: str,
    attacker: Listener,
    fake_upstream: FakeUpstream,
    fake_anthropic: Listener,
) -> None:
    """Provider and proxy headers a caller sends never reach an upstream, and an application key cannot
    mark its traffic as evaluator traffic (which online evaluation leaves alone) with `x-opsgate-eval-run`."""
    headers = {
        "x-forwarded-host": "attacker.example", "x-forwarded-proto": "https", "openai-organization": "org-x",
        "openai-project": "proj-x", "anthropic-version": "2099-01-01", "anthropic-beta": "evil-2099",
        "x-opsgate-deployment": "other", "x-opsgate-eval-run": "run_hidden", "x-api-key-upstream": "sk-x",
    }  # fmt: skip
    sent = []
    for path, body in [
        ("/v1/chat/completions", {"model": "direct", "messages": MESSAGES}),
        ("/v1/chat/completions", {"model": "claude", "messages": MESSAGES}),
        ("/v1/messages", {"model": "claude", "max_tokens": 16, "messages": MESSAGES}),
        ("/v1/responses", {"model": "native", "input": "hi"}),
    ]:
        up, an = len(fake_upstream.requests), len(fake_anthropic.received)
        with gw.http() as http:
            r = http.post(path, json=body, headers={**gw.auth(app_key), **headers})
        assert r.status_code == 200, r.text
        sent += [h["headers"] for h in fake_upstream.requests[up:]] + fake_anthropic.headers_seen()[an:]
        row = gw.log_row(r.headers["x-opsgate-request-id"])
        assert "eval_run" not in (row.get("extra") or {}), row
    assert len(sent) == 4
    for seen in sent:
        lowered = {k.lower(): v for k, v in seen.items()}
        assert not {"x-forwarded-host", "openai-organization", "openai-project", "anthropic-beta"} & set(
            lowered
        )
        assert not any(k.startswith("x-opsgate") for k in lowered)
        assert lowered.get("anthropic-version", "2023-06-01") == "2023-06-01"
        assert "sk-x" not in str(lowered)
    with gw.http() as http:  # an evaluator's key still tags its run
        r = http.post(
            "/v1/chat/completions",
            json={"model": "direct", "messages": MESSAGES},
            headers={**gw.auth(gw.admin_key), "x-opsgate-eval-run": "run_1"},
        )
    assert gw.log_row(r.headers["x-opsgate-request-id"])["extra"]["eval_run"] == "run_1"
    assert_no_leak(gw, attacker, r.text)
