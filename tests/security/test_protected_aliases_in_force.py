"""Attack: an application key is served a version nobody approved, through an alias the gateway's version
rule took for protected while the governance rules in force did not.

Approvals follow the governance rules version at production (the promotion service reads it per request);
the request path's rule (gateway/flow/access.py) read `config/gateway.yaml` as it was at start. An operator
who tightened the file (here: `canary` protected, committed later, its governance version not approved
yet) opened a hole: a prompt engineer promoted a candidate to `canary` with no approval (the rules in force
do not protect it) and every application key was served it, by `@canary`, `@latest` or its number, on
every API. The same gap served the candidate of a rollout that started while its alias was unprotected
(no promotion) once the alias became protected. Now the request path follows the rules in force, and a
rollout's candidate counts as approved only when the rollout started through an applied promotion.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.gateway import GatewayProcess
from tests.registry.conftest import SUPPORT_QA, GitProject

BOB = ("Bob Builder", "bob@example.com")
VARIABLES = {"product": "Acme"}
QUESTION = [{"role": "user", "content": "Does Acme support single sign-on?"}]


@pytest.fixture(scope="module")
def setup(
    project_factory: Callable[..., Path], gateway_factory: Callable[..., GatewayProcess]
) -> Iterator[tuple[GitProject, GatewayProcess, dict[str, str]]]:
    """Installed with the committed rules (staging, production protected); then the operator commits a
    tightening of config/gateway.yaml (`canary` protected too) and restarts: that change is a governance
    version to approve, not yet in force."""
    project = GitProject(
        project_factory(files={".gitignore": ".opsgate/\n", "prompts/support_qa.yaml": SUPPORT_QA})
    )
    gw = gateway_factory(project.path)
    with gw:  # the first start registers the committed rules as governance@1 (in force)
        keys = {
            "app": _key(gw, "app", "app"),
            "engineer": _key(gw, "engineer", "prompt-engineer"),
            "approver": _key(gw, "approver", "approver"),
        }
    config = project.path / "config" / "gateway.yaml"
    text = config.read_text(encoding="utf-8")
    assert "  protected_aliases:\n" in text
    config.write_text(text.replace("  protected_aliases:\n", "  protected_aliases:\n    canary: {}\n", 1))
    project.write("prompts/support_qa.yaml", SUPPORT_QA.replace("SAML and OIDC", "UNAPPROVED WORDING"))
    project.commit("protect canary; candidate wording", author=BOB)
    with gw.start():
        synced = gw.cli("sync", key=keys["engineer"]).stdout
        assert "prompt:support_qa@2" in synced and "governance:governance@2" in synced
        yield project, gw, keys


def _key(gw: GatewayProcess, name: str, role: str) -> str:
    out = gw.cli("keys", "create", "--name", name, "--role", role, key=gw.admin_key).stdout
    key = out.strip().splitlines()[-1]
    gw.wait_for_key(key)
    return key


def _ask(gw: GatewayProcess, key: str, path: str, model: str) -> httpx.Response:
    bodies: dict[str, dict[str, Any]] = {
        "/v1/chat/completions": {"messages": QUESTION},
        "/v1/responses": {"input": QUESTION[0]["content"]},
        "/v1/messages": {"messages": QUESTION, "max_tokens": 64},
    }
    with gw.http() as http:
        return http.post(
            path,
            json={"model": model, "prompt_variables": VARIABLES, **bodies[path]},
            headers=gw.auth(key),
        )


def _served(gw: GatewayProcess, key: str, model: str, wanted: str, timeout: float = 10) -> None:
    """Wait until the gateway's snapshot serves `wanted` wording for `model` (alias moves are polled)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = _ask(gw, key, "/v1/chat/completions", model)
        if r.status_code == 200 and wanted in r.text:
            return
        time.sleep(0.2)
    raise AssertionError(f"{model} never served {wanted!r}")


PATHS = ["/v1/chat/completions", "/v1/responses", "/v1/messages"]


def test_an_alias_the_rules_in_force_do_not_protect_approves_nothing(
    setup: tuple[GitProject, GatewayProcess, dict[str, str]],
) -> None:
    _, gw, keys = setup
    moved = gw.cli("promote", "prompt:support_qa@2", "--to", "canary", key=keys["engineer"])
    assert "applied" in moved.stderr  # the rules in force do not protect canary: no approval asked
    _served(gw, keys["engineer"], "prompt:support_qa@canary", "UNAPPROVED")
    for path in PATHS:
        for model in ("prompt:support_qa@canary", "support_qa@latest", "support_qa@2"):
            r = _ask(gw, keys["app"], path, model)
            assert r.status_code == 403, (path, model, r.text)
            assert "UNAPPROVED" not in r.text
            row = gw.log_row(r.headers["x-opsgate-request-id"])
            assert (row["status"], row["error_type"]) == (403, "version_not_approved")
        approved = _ask(gw, keys["app"], path, "support_qa")
        assert approved.status_code == 200 and "UNAPPROVED" not in approved.text, approved.text


def test_a_rollout_candidate_that_no_promotion_let_in_is_not_approved_by_a_later_protection(
    setup: tuple[GitProject, GatewayProcess, dict[str, str]],
) -> None:
    _, gw, keys = setup
    engineer = keys["engineer"]
    gw.cli("promote", "prompt:support_qa@1", "--to", "canary", key=engineer)  # unprotected: at once
    started = gw.cli(
        "rollout", "start", "prompt:support_qa@2", "--alias", "canary", "--share", "1", key=engineer
    )
    assert "active" in started.stderr  # no promotion: canary is not protected by the rules in force
    # the operator's tightening in force: governance@2 (synced at start) requested and approved
    governance = "governance:governance@2"
    requested = gw.cli("promote", governance, "--to", "production", key=engineer).stdout
    promotion = next(w for w in requested.split() if w.startswith("prm_"))
    assert "applied" in gw.cli("approve", promotion, key=keys["approver"]).stdout
    time.sleep(2)  # a few snapshot refreshes (cache.refresh_interval_s: 0.5)
    _served(gw, engineer, "prompt:support_qa@canary", "UNAPPROVED")  # the rollout serves its candidate
    for path in PATHS:
        r = _ask(gw, keys["app"], path, "prompt:support_qa@canary")
        assert r.status_code == 403, (path, r.text)
        assert "UNAPPROVED" not in r.text
