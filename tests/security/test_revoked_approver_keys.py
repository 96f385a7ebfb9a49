"""Issue 11 (four-eyes) retried with a revoked key: a gateway holds keys in a cache refreshed every
`cache.refresh_interval_s`, so a key revoked elsewhere (the CLI, another replica) still approved
promotions there until the next refresh, through the admin API and the dashboard alike (both call the
promotion service). An approval or rejection now counts only from a key that is live in the database in
the same transaction (403 `key_revoked`). Real gateway, revocation by the CLI in another process.
"""

from __future__ import annotations

from typing import Any

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import GatewayProcess, commit_project

PROMPT = "name: hello\nmessages:\n  - {role: system, content: 'Hi, version %d.'}\n"
SLOW_KEYS = "cache:\n  refresh_interval_s: 20\n"  # the window a revoked key stays in the cache


def post(gw: GatewayProcess, path: str, key: str, body: dict[str, Any]) -> Any:
    with gw.http() as http:
        return http.post(path, json=body, headers=gw.auth(key))


def test_a_key_revoked_elsewhere_no_longer_approves(
    make_project: ProjectFactory, start_gateway: GatewayFactory
) -> None:
    project = make_project(files={"prompts/hello.yaml": PROMPT % 1, "config/gateway.yaml": SLOW_KEYS})
    gw = start_gateway(project)
    made = {}
    for name, roles in (("rita@example.com", ["prompt-engineer"]), ("ann@example.com", ["approver"])):
        r = post(gw, "/admin/keys", gw.admin_key, {"name": name, "principal": name, "roles": roles})
        assert r.status_code == 201, r.text
        made[name] = r.json()
    # the gateway that created them knows them at once (it refreshes after its own writes), or soon
    for value in made.values():
        gw.wait_for_key(value["key"], timeout=30)
    (project / "prompts" / "hello.yaml").write_text(PROMPT % 2, encoding="utf-8")
    commit_project(project, "version 2")
    assert post(gw, "/admin/sync", gw.admin_key, {}).status_code == 200
    request = post(
        gw,
        "/admin/promotions",
        made["rita@example.com"]["key"],
        {"ref": "prompt:hello@2", "to": "production"},
    )
    assert request.status_code == 201, request.text

    ann = made["ann@example.com"]
    revoked = gw.cli("keys", "revoke", ann["id"], key=gw.admin_key)
    assert "revoked" in revoked.stdout, revoked.stdout + revoked.stderr
    pid = request.json()["id"]
    refused = post(gw, f"/admin/promotions/{pid}/approve", ann["key"], {})
    # 403 key_revoked while the gateway's cache still holds the key; 401 once it refreshed
    assert refused.status_code in (401, 403), refused.text
    if refused.status_code == 403:
        assert refused.json()["error"]["code"] == "key_revoked"
    assert post(gw, f"/admin/promotions/{pid}/reject", ann["key"], {"reason": "x"}).status_code in (401, 403)
    with gw.http() as http:
        assert http.get(f"/admin/promotions/{pid}", headers=gw.auth()).json()["state"] == "pending"
