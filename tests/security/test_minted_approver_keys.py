"""Issue 11, finding 8d: an admin minted an approver key for a made-up principal and approved their own
promotion request with it, through the admin API of a running gateway. Each key now records the key that
created it; an approval by a key the requester created (directly, or through keys it created) does not
count (403 four_eyes), while an approver whose key someone else created still approves.
"""

from __future__ import annotations

from typing import Any

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import GatewayProcess, commit_project

PROMPT = "name: hello\nmessages:\n  - {role: system, content: 'Hi, version %d.'}\n"


def post(gw: GatewayProcess, path: str, key: str, body: dict[str, Any]) -> Any:
    with gw.http() as http:
        return http.post(path, json=body, headers=gw.auth(key))


def new_key(gw: GatewayProcess, by: str, name: str, principal: str, roles: list[str]) -> str:
    r = post(gw, "/admin/keys", by, {"name": name, "principal": principal, "roles": roles})
    assert r.status_code == 201, r.text
    value: str = r.json()["key"]
    gw.wait_for_key(value)
    return value


def test_an_approver_key_the_requester_minted_does_not_count(
    make_project: ProjectFactory, start_gateway: GatewayFactory
) -> None:
    project = make_project(files={"prompts/hello.yaml": PROMPT % 1})
    gw = start_gateway(project)
    root = gw.admin_key
    mallory = new_key(gw, root, "mallory", "mallory@example.com", ["admin"])
    (project / "prompts" / "hello.yaml").write_text(PROMPT % 2, encoding="utf-8")
    commit_project(project, "version 2")
    assert post(gw, "/admin/sync", mallory, {}).status_code == 200

    request = post(gw, "/admin/promotions", mallory, {"ref": "prompt:hello@2", "to": "production"})
    assert request.status_code == 201, request.text
    pid = request.json()["id"]

    # a made-up approver, minted by the requester: refused
    sock = new_key(gw, mallory, "sock", "sock-puppet@example.com", ["approver"])
    refused = post(gw, f"/admin/promotions/{pid}/approve", sock, {})
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["code"] == "four_eyes"
    assert "was created by" in refused.json()["error"]["message"]
    # ...and through a second admin key the requester minted, which mints the approver
    proxy = new_key(gw, mallory, "proxy", "proxy@example.com", ["admin"])
    deeper = new_key(gw, proxy, "deeper", "deeper@example.com", ["approver"])
    assert post(gw, f"/admin/promotions/{pid}/approve", deeper, {}).status_code == 403

    # an approver the root admin created approves
    carol = new_key(gw, root, "carol", "carol@example.com", ["approver"])
    done = post(gw, f"/admin/promotions/{pid}/approve", carol, {})
    assert done.status_code == 200 and done.json()["state"] == "applied", done.text


def test_an_approver_key_an_author_minted_does_not_count(
    make_project: ProjectFactory, start_gateway: GatewayFactory
) -> None:
    """Retried with the author instead of the requester: Mallory commits version 2, Rita (who did not write
    it) requests the promotion, and Mallory, an admin, mints an approver that approves. A key created by an
    author of the version (directly or through keys it created) does not count either."""
    project = make_project(files={"prompts/hello.yaml": PROMPT % 1})
    gw = start_gateway(project)
    root = gw.admin_key
    mallory = new_key(gw, root, "mallory", "Mallory@Example.com", ["admin"])
    rita = new_key(gw, root, "rita", "rita@example.com", ["prompt-engineer"])
    (project / "prompts" / "hello.yaml").write_text(PROMPT % 2, encoding="utf-8")
    commit_project(project, "version 2", author=("Mallory", "mallory@example.com"))
    assert post(gw, "/admin/sync", rita, {}).status_code == 200
    request = post(gw, "/admin/promotions", rita, {"ref": "prompt:hello@2", "to": "production"})
    assert request.status_code == 201, request.text
    pid = request.json()["id"]

    assert post(gw, f"/admin/promotions/{pid}/approve", mallory, {}).status_code == 403  # the author
    proxy = new_key(gw, mallory, "proxy", "proxy@example.com", ["admin"])
    for sock in (
        new_key(gw, mallory, "sock", "sock-puppet@example.com", ["approver"]),
        new_key(gw, proxy, "deeper", "deeper@example.com", ["approver"]),
    ):
        refused = post(gw, f"/admin/promotions/{pid}/approve", sock, {})
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "four_eyes"
        assert "an author of prompt:hello@2" in refused.json()["error"]["message"]
    carol = new_key(gw, root, "carol", "carol@example.com", ["approver"])
    done = post(gw, f"/admin/promotions/{pid}/approve", carol, {})
    assert done.status_code == 200 and done.json()["state"] == "applied", done.text
