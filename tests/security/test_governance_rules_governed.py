"""Issue 11, finding 10: config/policies.yaml applied live by a file watch, unaudited, and the approval
rules in config/gateway.yaml applied at restart: an operator (or anyone who could write the file) turned
checks off with no record and no second pair of eyes. Policy and governance rules are now versioned,
audited artifacts: a file edit does nothing by itself; a committed change is registered by `opsgate sync`
and takes effect (without a restart) only when `policy:policies@production` moves; a change that loosens
the rules needs an approval by an admin other than the requester. Real gateway, real git.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import GatewayProcess, commit_project
from tests.fakes.upstream import FakeUpstream
from tests.policy.conftest import routers

STRICT = """\
rules:
  - name: secrets
    checks:
      - {type: deny_list, terms: [forbidden-word]}
"""
LOOSE = "rules: []\n"
BODY = {"model": "echo", "messages": [{"role": "user", "content": "say forbidden-word"}], "max_tokens": 5}


def chat(gw: GatewayProcess, key: str) -> httpx.Response:
    with gw.http() as http:
        return http.post("/v1/chat/completions", json=BODY, headers=gw.auth(key))


def admin(gw: GatewayProcess, method: str, path: str, key: str, body: dict[str, Any] | None = None) -> Any:
    with gw.http() as http:
        return http.request(method, path, json=body, headers=gw.auth(key))


def new_key(gw: GatewayProcess, name: str, roles: list[str]) -> str:
    r = admin(gw, "POST", "/admin/keys", gw.admin_key, {"name": name, "principal": name, "roles": roles})
    assert r.status_code == 201, r.text
    value: str = r.json()["key"]
    gw.wait_for_key(value)
    return value


def blocked_within(gw: GatewayProcess, key: str, want: bool, seconds: float = 5) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        got = chat(gw, key).status_code != 200
        if got == want or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def test_policy_changes_are_promoted_and_loosening_needs_a_second_admin(
    make_project: ProjectFactory, start_gateway: GatewayFactory, fake_upstream: FakeUpstream
) -> None:
    project = make_project(routers(fake_upstream), files={"config/policies.yaml": STRICT})
    gw = start_gateway(project)
    app = new_key(gw, "shop", ["app"])
    alice = new_key(gw, "alice@example.com", ["admin"])
    bob = new_key(gw, "bob@example.com", ["approver"])
    carol = new_key(gw, "carol@example.com", ["admin"])
    assert chat(gw, app).status_code == 400  # the committed policy is in force from the first start

    # an edit of the file, even committed, does nothing by itself (no live file watch)
    (project / "config" / "policies.yaml").write_text(LOOSE, encoding="utf-8")
    commit_project(project, "drop the deny list", author=("Alice", "alice@example.com"))
    time.sleep(2)
    assert chat(gw, app).status_code == 400

    synced = admin(gw, "POST", "/admin/sync", alice, {})
    assert synced.status_code == 200 and "policy:policies@2" in str(synced.json()["rules"]), synced.text
    request = admin(gw, "POST", "/admin/promotions", alice, {"ref": "policy:policies@2", "to": "production"})
    assert request.status_code == 201, request.text
    assert request.json()["rule"]["approver_roles"] == ["admin"]
    assert "rule 'secrets' removed" in request.json()["rule"]["loosens"]
    pid = request.json()["id"]
    # an approver is not enough to loosen, nor is the requester herself
    assert admin(gw, "POST", f"/admin/promotions/{pid}/approve", bob, {}).status_code == 403
    assert admin(gw, "POST", f"/admin/promotions/{pid}/approve", alice, {}).status_code == 403
    assert chat(gw, app).status_code == 400
    # a second admin: applied, and the running gateway follows without a restart
    done = admin(gw, "POST", f"/admin/promotions/{pid}/approve", carol, {})
    assert done.status_code == 200 and done.json()["state"] == "applied", done.text
    assert not blocked_within(gw, app, want=False)

    # tightening follows the alias rule: an approver's approval applies it
    (project / "config" / "policies.yaml").write_text(
        STRICT.replace("]}", ", other-word]}"), encoding="utf-8"
    )
    commit_project(project, "deny list back", author=("Alice", "alice@example.com"))
    assert admin(gw, "POST", "/admin/sync", alice, {}).status_code == 200
    tighten = admin(gw, "POST", "/admin/promotions", alice, {"ref": "policy:policies@3", "to": "production"})
    assert "loosens" not in tighten.json()["rule"]
    assert admin(gw, "POST", f"/admin/promotions/{tighten.json()['id']}/approve", bob, {}).status_code == 200
    assert blocked_within(gw, app, want=True)

    # the trail: every step is in the audit chain, which verifies
    actions = [e["action"] for e in admin(gw, "GET", "/admin/audit?limit=1000", alice).json()]
    assert "rules.bootstrap" in actions and actions.count("alias.promote") >= 2
    assert admin(gw, "GET", "/admin/audit/verify", alice).json()["ok"]


def test_loosening_the_approval_rules_needs_a_second_admin(
    make_project: ProjectFactory, start_gateway: GatewayFactory, fake_upstream: FakeUpstream
) -> None:
    project = make_project(routers(fake_upstream))
    gw = start_gateway(project)
    alice = new_key(gw, "alice@example.com", ["admin"])
    bob = new_key(gw, "bob@example.com", ["approver"])
    text = (project / "config" / "gateway.yaml").read_text(encoding="utf-8")
    (project / "config" / "gateway.yaml").write_text(
        text + "governance:\n  protected_aliases:\n    production: {approvals: 0}\n", encoding="utf-8"
    )
    commit_project(project, "no approvals for production")
    synced = admin(gw, "POST", "/admin/sync", alice, {})
    assert "governance:governance@2" in str(synced.json()["rules"]), synced.text
    request = admin(
        gw, "POST", "/admin/promotions", alice, {"ref": "governance:governance@2", "to": "production"}
    )
    assert request.status_code == 201 and request.json()["state"] == "pending", request.text
    loosens = request.json()["rule"]["loosens"]
    assert any("staging" in line and "no longer protected" in line for line in loosens)
    assert any("production: approvals 1 -> 0" in line for line in loosens)
    assert admin(gw, "POST", f"/admin/promotions/{request.json()['id']}/approve", bob, {}).status_code == 403
