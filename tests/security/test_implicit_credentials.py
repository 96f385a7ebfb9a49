"""Attack: a router that names no `api_key_env` still sends a credential the operator never allowed.

A prompt engineer commits a deployment without `api_key_env`, through litellm, to a host the operator
allows. litellm then finds a credential in the gateway's environment on its own: `ANTHROPIC_AUTH_TOKEN`
for `anthropic/`, `HF_TOKEN` for `huggingface/`, `TOGETHER_AI_TOKEN` for `together_ai/`,
`AWS_BEARER_TOKEN_BEDROCK` or the Google identity for `bedrock/` and `vertex_ai/`: none of them matches
`egress.api_key_envs`, and each went out as `Authorization: Bearer <secret>` to whatever allowed host the
file named (before the fix: all three canaries below reached the allowed listeners). Credentials now
come only from `api_key_env`: a deployment without one sends a placeholder, and a cloud-identity provider
without one may not set `api_base` (refused by `opsgate sync` at its line, and before the call).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import GatewayProcess
from tests.security.egress_fakes import (
    CANARY_ENV,
    MESSAGES,
    Listener,
    attacker,
    fake_anthropic,
    gateway_yaml,
    git_commit_all,
    line_of,
    sync,
)

__all__ = ["attacker", "fake_anthropic"]  # fixtures

IMPLICIT = {
    "ANTHROPIC_AUTH_TOKEN": "sk-canary-auth-token-" + secrets.token_hex(8),
    "HF_TOKEN": "hf_canary" + secrets.token_hex(8),
    "TOGETHER_AI_TOKEN": "canary-together-" + secrets.token_hex(8),
    "AWS_BEARER_TOKEN_BEDROCK": "canary-bedrock-" + secrets.token_hex(8),
}


@pytest.fixture(scope="module")
def internal() -> Iterator[Listener]:
    """An OpenAI-compatible host the operator allows (say, their vLLM box): it records every request."""
    listener = Listener().start()
    yield listener
    listener.stop()


@pytest.fixture(scope="module")
def gw(
    project_factory: ProjectFactory,
    gateway_factory: GatewayFactory,
    fake_anthropic: Listener,
    internal: Listener,
) -> Iterator[GatewayProcess]:
    env = {k: v for k, v in CANARY_ENV.items() if k != "ANTHROPIC_API_KEY"}  # only the implicit ones
    project = project_factory(files={"config/gateway.yaml": gateway_yaml(fake_anthropic, internal)})
    git_commit_all(project, "project")
    with gateway_factory(project, env={**env, **IMPLICIT}) as gateway:
        yield gateway


def router(name: str, deployment: dict[str, Any]) -> str:
    return yaml.safe_dump({"name": name, "deployments": [deployment]}, sort_keys=False)


def test_a_deployment_without_api_key_env_sends_no_credential_from_the_environment(
    gw: GatewayProcess, fake_anthropic: Listener, internal: Listener, attacker: Listener
) -> None:
    files = {
        "config/routers/implicit_claude.yaml": router(
            "implicit_claude", {"id": "c", "model": "anthropic/claude-x", "api_base": fake_anthropic.url}
        ),
        "config/routers/implicit_hf.yaml": router(
            "implicit_hf", {"id": "h", "model": "huggingface/org/model", "api_base": internal.url + "/v1"}
        ),
        "config/routers/implicit_together.yaml": router(
            "implicit_together", {"id": "t", "model": "together_ai/model", "api_base": internal.url + "/v1"}
        ),
    }
    done = sync(gw, files, "routers without api_key_env")
    assert done.returncode == 0, done.stdout + done.stderr
    names = {"implicit_claude", "implicit_hf", "implicit_together"}
    deadline = time.monotonic() + 15  # the gateway sees new versions within its refresh interval
    with gw.http() as http:
        for name in sorted(names):
            body = {"model": f"router:{name}@latest", "messages": MESSAGES}
            while http.post("/v1/chat/completions", json=body, headers=gw.auth()).status_code == 404:
                assert time.monotonic() < deadline, f"router {name} never reached the gateway"
                time.sleep(0.1)
    fake_anthropic.received.clear()
    internal.received.clear()
    answers = []
    for name in ("implicit_claude", "implicit_hf", "implicit_together"):
        for stream in (False, True):
            with gw.http() as http:
                r = http.post(
                    "/v1/chat/completions",
                    json={"model": f"router:{name}@latest", "messages": MESSAGES, "stream": stream},
                    headers=gw.auth(),
                )
            answers.append(r.text)
    # the legitimate part still works: the allowed host answered the Anthropic call
    assert "hello from fake anthropic" in answers[0], answers[0]
    seen = fake_anthropic.received + internal.received
    assert len(seen) >= 4, [r.path for r in seen]  # every deployment was called (without a credential)
    sent = "\n".join(f"{r.headers} {r.body!r}" for r in seen)
    for variable, secret in IMPLICIT.items():
        assert secret not in sent, f"{variable} left the gateway"
        assert all(secret not in text for text in answers)
        assert secret not in gw.output()
    assert attacker.received == []


@pytest.mark.parametrize("provider", ["bedrock/anthropic.claude-v2", "vertex_ai/gemini-pro"])
def test_a_cloud_identity_deployment_without_api_key_env_may_not_set_api_base(
    gw: GatewayProcess, internal: Listener, provider: str
) -> None:
    name = "cloud_" + provider.partition("/")[0]
    text = router(name, {"id": "b", "model": provider, "api_base": internal.url})
    done = sync(gw, {f"config/routers/{name}.yaml": text}, "a cloud-identity router elsewhere")
    try:
        assert done.returncode == 1, done.stdout + done.stderr
        line = line_of(text, "api_base:")
        expected = f"config/routers/{name}.yaml:{line}: deployments.0.api_base: without api_key_env"
        assert expected in done.stderr, done.stderr
        assert "cloud identity" in done.stderr
        assert name not in done.stdout  # nothing registered
    finally:
        sync(gw, {f"config/routers/{name}.yaml": ""}, "remove it")
    assert all(IMPLICIT["AWS_BEARER_TOKEN_BEDROCK"] not in str(r.headers) for r in internal.received)
