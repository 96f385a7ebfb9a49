"""Attack: an application key asks for a version nobody approved (issue 11, finding 6).

Every registered version, even one synced a minute ago, was servable by any key as `@latest` or `@N`;
promotion only gated alias names. Now an application key is served only versions a protected alias
points at, however it names them; candidates need the prompt-engineer role or a grant on the key, and
an approved prompt cannot pull an unapproved router in through a moving selector."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.fakes.gateway import GatewayProcess
from tests.registry.conftest import ALICE, SUPPORT_QA, GitProject

ECHO_ROUTER = """\
name: echo
deployments:
  - {id: local, model: local/extractive}
"""
# an approved prompt that names its router by a moving selector
FOLLOWS_LATEST = """\
name: follows
router: echo@latest
messages:
  - role: system
    content: "The sky is blue. Grass is green."
"""
QUESTION = [{"role": "user", "content": "Does Acme support single sign-on?"}]


@pytest.fixture(scope="module")
def gateway(
    project_factory: Callable[..., Path], gateway_factory: Callable[..., GatewayProcess]
) -> Iterator[tuple[GitProject, GatewayProcess, dict[str, str]]]:
    """A fresh install (everything at version 1 in production), then version 2 of the prompt and the
    router committed and synced, never promoted."""
    project = GitProject(
        project_factory(
            files={
                ".gitignore": ".opsgate/\n",
                "prompts/support_qa.yaml": SUPPORT_QA,
                "prompts/follows.yaml": FOLLOWS_LATEST,
                "config/routers/echo.yaml": ECHO_ROUTER,
            }
        )
    )
    # build_project commits everything: a first start registers only committed files
    gw = gateway_factory(project.path)
    keys = {
        "app": _key(gw, "app", "app"),
        "engineer": _key(gw, "engineer", "prompt-engineer"),
        "granted": _key(gw, "granted", "app", "--allow", "prompt:support_qa@*", "--allow", "*"),
    }
    project.write("prompts/support_qa.yaml", SUPPORT_QA.replace("SAML and OIDC", "UNAPPROVED WORDING"))
    project.write(
        "config/routers/echo.yaml", ECHO_ROUTER.replace("name: echo", "name: echo\ndescription: v2")
    )
    project.commit("candidate wording", author=ALICE)
    out = gw.cli("sync", key=keys["engineer"]).stdout
    assert "prompt:support_qa@2" in out and "router:echo@2" in out
    gw.cli(
        "promote", "prompt:support_qa@2", "--to", "canary", key=keys["engineer"]
    )  # unprotected: moves at once
    with gw:
        yield project, gw, keys


def _key(gw: GatewayProcess, name: str, role: str, *extra: str) -> str:
    out = gw.cli("keys", "create", "--name", name, "--role", role, *extra, key=gw.admin_key).stdout
    key = out.strip().splitlines()[-1]
    gw.wait_for_key(key)
    return key


def _ask(gw: GatewayProcess, key: str, model: str) -> Any:
    with gw.http() as http:
        return http.post(
            "/v1/chat/completions",
            json={"model": model, "messages": QUESTION, "prompt_variables": {"product": "Acme"}},
            headers=gw.auth(key),
        )


@pytest.mark.parametrize(
    "model",
    ["prompt:support_qa@latest", "prompt:support_qa@2", "prompt:support_qa@canary", "router:echo@latest"],
)
def test_an_app_key_is_never_served_an_unapproved_version(
    gateway: tuple[GitProject, GatewayProcess, dict[str, str]], model: str
) -> None:
    _, gw, keys = gateway
    r = _ask(gw, keys["app"], model)
    assert r.status_code == 403, r.text
    error = r.json()["error"]
    assert error["code"] == "version_not_approved" and error["param"] == "model"
    assert "promote" in error["message"] and "--allow" in error["message"]
    assert "UNAPPROVED" not in r.text
    row = gw.log_row(r.headers["x-opsgate-request-id"])
    assert (row["status"], row["error_type"], row["model"]) == (403, "version_not_approved", model)


def test_approved_versions_are_served_however_they_are_named(
    gateway: tuple[GitProject, GatewayProcess, dict[str, str]],
) -> None:
    _, gw, keys = gateway
    for model in (
        "support_qa",
        "prompt:support_qa@production",
        "prompt:support_qa@1",
        "echo",
        "router:echo@1",
    ):
        r = _ask(gw, keys["app"], model)
        assert r.status_code == 200, (model, r.text)
        assert "UNAPPROVED" not in r.text


def test_candidates_reach_engineers_and_keys_granted_them(
    gateway: tuple[GitProject, GatewayProcess, dict[str, str]],
) -> None:
    _, gw, keys = gateway
    for key in (keys["engineer"], keys["granted"], gw.admin_key):
        r = _ask(gw, key, "prompt:support_qa@latest")
        assert r.status_code == 200, r.text
        assert "UNAPPROVED WORDING" in r.json()["choices"][0]["message"]["content"]
        assert r.headers["x-opsgate-versions"].startswith("prompt:support_qa@2#")
    # the grant covers that prompt's versions only
    assert _ask(gw, keys["granted"], "router:echo@latest").status_code == 403


def test_an_approved_prompt_cannot_pull_in_an_unapproved_router_by_a_moving_selector(
    gateway: tuple[GitProject, GatewayProcess, dict[str, str]],
) -> None:
    _, gw, keys = gateway
    client = gw.client(api_key=keys["app"])
    with pytest.raises(openai.PermissionDeniedError) as denied:
        client.chat.completions.create(model="follows", messages=QUESTION)  # type: ignore[arg-type]
    body = denied.value.body
    assert isinstance(body, dict) and body["code"] == "version_not_approved"
    assert "router:echo@latest (named by the prompt being served)" in body["message"]
    engineer = gw.client(api_key=keys["engineer"])
    raw = engineer.chat.completions.with_raw_response.create(model="follows", messages=QUESTION)  # type: ignore[arg-type]
    assert raw.headers["x-opsgate-versions"].split(",")[1].startswith("router:echo@2#")


def test_models_list_still_shows_what_the_app_key_may_call(
    gateway: tuple[GitProject, GatewayProcess, dict[str, str]],
) -> None:
    _, gw, keys = gateway
    ids = {m.id for m in gw.client(api_key=keys["app"]).models.list()}
    assert {"support_qa", "echo", "default"} <= ids
