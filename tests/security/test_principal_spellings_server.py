"""Issue 11 (8c) retried with other encodings, on a running gateway: approver keys spelled as the requester
or as the version's git author with a variation selector, a Hangul filler, a combining grapheme joiner,
`mailto:`, a quoted display name, the domain's trailing dot, a `+tag`, the bare user name, a Turkish `İ` or
dotless i (U+0131) each counted as another person and approved. gateway/principals.py now removes every
default-ignorable character and folds these spellings (`identity`), and a bare name is the person of the
email with that user; a principal mixing look-alike scripts (Cyrillic U+0430 in a Latin name) is refused
when the key is created.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import GatewayProcess, commit_project

PROMPT = "name: hello\nmessages:\n  - {role: system, content: 'Hi, version %d.'}\n"

AS_REQUESTER = [
    "rita\ufe0f@example.com",  # variation selector 16
    "rita\u3164@example.com",  # Hangul filler
    "r\u034fita@example.com",  # combining grapheme joiner
    "mailto:Rita@Example.com",
    '\u00a0"Rita R." <RITA@example.com>\u3000',
    "rita@example.com.",
    "rita+approvals@example.com",
    "Rita",  # the bare user name of rita@example.com
]
AS_AUTHOR = [
    "alİce@example.com",  # Turkish capital dotted I: casefolds to i + combining dot
    "al\u0131ce@example.com",  # Turkish dotless i
    '"Alice Author"',
    "alice",
]


def post(gw: GatewayProcess, path: str, key: str, body: dict[str, Any]) -> Any:
    with gw.http() as http:
        return http.post(path, json=body, headers=gw.auth(key))


def new_key(gw: GatewayProcess, name: str, principal: str, roles: list[str]) -> str:
    r = post(gw, "/admin/keys", gw.admin_key, {"name": name, "principal": principal, "roles": roles})
    assert r.status_code == 201, r.text
    value: str = r.json()["key"]
    gw.wait_for_key(value)
    return value


@pytest.fixture(scope="module")
def gateway(project_factory: ProjectFactory, gateway_factory: GatewayFactory) -> GatewayProcess:
    project = project_factory(files={"prompts/hello.yaml": PROMPT % 1})
    gw = gateway_factory(project)
    (project / "prompts" / "hello.yaml").write_text(PROMPT % 2, encoding="utf-8")
    commit_project(project, "version 2", author=("Alice Author", "alice@example.com"))
    rita = new_key(gw, "rita", "rita@example.com", ["prompt-engineer"])
    assert post(gw, "/admin/sync", gw.admin_key, {}).status_code == 200
    request = post(gw, "/admin/promotions", rita, {"ref": "prompt:hello@2", "to": "production"})
    assert request.status_code == 201, request.text
    gw.promotion_id = request.json()["id"]  # type: ignore[attr-defined]
    return gw


@pytest.mark.parametrize("spelling", AS_REQUESTER + AS_AUTHOR)
def test_another_spelling_of_the_requester_or_author_does_not_approve(
    gateway: GatewayProcess, spelling: str
) -> None:
    twin = new_key(gateway, "twin", spelling, ["approver"])
    refused = post(gateway, f"/admin/promotions/{gateway.promotion_id}/approve", twin, {})  # type: ignore[attr-defined]
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["code"] == "four_eyes"


def test_a_principal_mixing_look_alike_scripts_is_refused(gateway: GatewayProcess) -> None:
    r = post(
        gateway,
        "/admin/keys",
        gateway.admin_key,
        {"name": "x", "principal": "\u0430lice@example.com", "roles": ["approver"]},
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "mixed_scripts"
    assert r.json()["error"]["param"] == "principal"


def test_someone_else_still_approves(gateway: GatewayProcess) -> None:
    """Last in the module: the request is still pending after every refusal; another domain's `alice` is
    another person (two emails are compared whole) and applies it."""
    other = new_key(gateway, "other", "alice@b.example", ["approver"])
    done = post(gateway, f"/admin/promotions/{gateway.promotion_id}/approve", other, {})  # type: ignore[attr-defined]
    assert done.status_code == 200, done.text
    assert done.json()["state"] == "applied"
