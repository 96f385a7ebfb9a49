"""Issue 11 (8a) retried with a `Co-authored-by:` trailer: a version's authors were the git author and
committer of each commit, so a co-author named in the commit message (as GitHub writes squashed pull
requests with several authors) approved the change they co-wrote. Co-authors now count as authors
(gateway/registry/git.py). Real gateway, real git.
"""

from __future__ import annotations

from typing import Any

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import GatewayProcess, commit_project

PROMPT = "name: hello\nmessages:\n  - {role: system, content: 'Hi, version %d.'}\n"


def post(gw: GatewayProcess, path: str, key: str, body: dict[str, Any]) -> Any:
    with gw.http() as http:
        return http.post(path, json=body, headers=gw.auth(key))


def new_key(gw: GatewayProcess, principal: str, roles: list[str]) -> str:
    r = post(gw, "/admin/keys", gw.admin_key, {"name": principal, "principal": principal, "roles": roles})
    assert r.status_code == 201, r.text
    value: str = r.json()["key"]
    gw.wait_for_key(value)
    return value


def test_a_co_author_may_not_approve(make_project: ProjectFactory, start_gateway: GatewayFactory) -> None:
    project = make_project(files={"prompts/hello.yaml": PROMPT % 1})
    gw = start_gateway(project)
    (project / "prompts" / "hello.yaml").write_text(PROMPT % 2, encoding="utf-8")
    commit_project(
        project,
        "version 2\n\nCo-authored-by: Bob Builder <Bob@Example.com>",
        author=("Alice Author", "alice@example.com"),
    )
    rita = new_key(gw, "rita@example.com", ["prompt-engineer"])
    bob = new_key(gw, "bob@example.com", ["approver"])
    carol = new_key(gw, "carol@example.com", ["approver"])
    assert post(gw, "/admin/sync", gw.admin_key, {}).status_code == 200
    request = post(gw, "/admin/promotions", rita, {"ref": "prompt:hello@2", "to": "production"})
    assert request.status_code == 201, request.text
    pid = request.json()["id"]
    refused = post(gw, f"/admin/promotions/{pid}/approve", bob, {})
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["code"] == "four_eyes"
    assert "Bob Builder <Bob@Example.com>" in refused.json()["error"]["message"]
    done = post(gw, f"/admin/promotions/{pid}/approve", carol, {})
    assert done.status_code == 200 and done.json()["state"] == "applied", done.text
