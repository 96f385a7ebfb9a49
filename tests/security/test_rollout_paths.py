"""Issue 11 retried through rollouts (gateway/rollouts), a newer path that moves aliases, on a real gateway:

- an emergency rollback left a live canary running: its candidate kept serving its share of callers, and
  the evaluator's automatic promotion (`on_success: promote`) moved `production` forward again over the
  admin's rollback, without a new approval. An emergency rollback now ends the alias's live rollout.
- an automatic promotion moved a protected alias to whatever version the rollout row named (a database
  writer who edits `rollouts.candidate_version` got an unapproved version promoted, with a valid audit
  entry written by the gateway itself). It now never moves a protected alias that does not already name
  the candidate (the approved move); the rollout stops instead, audited with the reason; and `opsgate
  audit verify` reconciles live rollouts with their `rollout.start` entries, naming the edited field.
- a rollout of policy, governance or alert rules could be stopped (or rolled back by the evaluator) by a
  prompt engineer, undoing an approved tightening at once: loosening without a second admin. Rule kinds
  are refused (400 `param: kind`): they change by promotion only.
- rollout alias names were not validated (`Production`, `production `, a zero-width space).
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import FAST_GATEWAY_YAML, GatewayProcess, commit_project, deployment
from tests.fakes.upstream import FakeUpstream

GATEWAY_YAML = FAST_GATEWAY_YAML + "rollouts:\n  check_interval_s: 3600\n"  # checks are run by the test


def _router(url: str, description: str) -> str:
    return yaml.safe_dump(
        {"name": "bot", "description": description, "deployments": [deployment("up", url)]}, sort_keys=False
    )


def call(gw: GatewayProcess, method: str, path: str, key: str, body: dict[str, Any] | None = None) -> Any:
    with gw.http() as http:
        return http.request(method, path, json=body, headers=gw.auth(key))


def new_key(gw: GatewayProcess, name: str, roles: list[str]) -> str:
    r = call(gw, "POST", "/admin/keys", gw.admin_key, {"name": name, "principal": name, "roles": roles})
    assert r.status_code == 201, r.text
    value: str = r.json()["key"]
    gw.wait_for_key(value)
    return value


@pytest.fixture
def gw(
    make_project: ProjectFactory, start_gateway: GatewayFactory, fake_upstream: FakeUpstream
) -> Iterator[GatewayProcess]:
    """Router `bot` v1 in production; v2 and v3 registered (all healthy); an engineer and an approver."""
    ok = fake_upstream.url("ok")
    root = make_project(routers={"bot": _router(ok, "v1")}, files={"config/gateway.yaml": GATEWAY_YAML})
    gateway = start_gateway(root)
    for v in ("v2", "v3"):
        (root / "config/routers/bot.yaml").write_text(_router(ok, v), encoding="utf-8")
        commit_project(root, v)
        assert "router:bot@" in gateway.cli("sync", key=gateway.admin_key).stdout
    gateway.engineer = new_key(gateway, "engineer@example.com", ["prompt-engineer"])  # type: ignore[attr-defined]
    gateway.approver = new_key(gateway, "approver@example.com", ["approver"])  # type: ignore[attr-defined]
    yield gateway


def start_canary(gw: GatewayProcess) -> dict[str, Any]:
    body = {
        "kind": "router",
        "name": "bot",
        "candidate": 2,
        "share": 0.5,
        "min_sample": 5,
        "max_sample": 5,  # a candidate not found worse after 5 requests succeeds
        "on_success": "promote",
        "metrics": [{"metric": "error_rate"}],
    }
    r = call(gw, "POST", "/admin/rollouts", gw.engineer, body)  # type: ignore[attr-defined]
    assert r.status_code == 201, r.text
    started = r.json()
    ok = call(gw, "POST", f"/admin/promotions/{started['promotion_id']}/approve", gw.approver, {})  # type: ignore[attr-defined]
    assert ok.status_code == 200 and ok.json()["state"] == "applied", ok.text
    checked = call(gw, "POST", f"/admin/rollouts/{started['id']}/check", gw.admin_key)
    assert checked.json()["state"] == "active", checked.text
    return dict(started)


def traffic(gw: GatewayProcess, n: int = 40) -> set[str]:
    client = gw.client()
    served = set()
    for i in range(n):
        raw = client.chat.completions.with_raw_response.create(
            model="bot", messages=[{"role": "user", "content": "hi"}], user=f"user-{i}"
        )
        served.add(raw.headers["x-opsgate-versions"].split("#")[0])
    return served


def counted_traffic(gw: GatewayProcess, rollout_id: str, per_arm: int = 5, timeout: float = 60) -> None:
    """Traffic until the request log holds `per_arm` rows of each arm of the rollout: a replica tags
    requests once its snapshot has the rollout, and the evaluator counts rows once they are written (on
    a loaded machine, a burst sent right after the start can beat both)."""
    deadline = time.monotonic() + timeout
    while True:
        traffic(gw, 10)
        arms = Counter(
            (row.get("extra") or {}).get("rollout", {}).get("arm")
            for row in gw.logs()
            if ((row.get("extra") or {}).get("rollout") or {}).get("id") == rollout_id
        )
        if min(arms["control"], arms["candidate"]) >= per_arm:
            return
        assert time.monotonic() < deadline, f"the rollout's arms never reached {per_arm} rows: {arms}"


def production(gw: GatewayProcess) -> int:
    r = call(gw, "GET", "/admin/artifacts/router/bot/versions/production", gw.admin_key)
    return int(r.json()["version"])


def test_an_emergency_rollback_ends_the_canary_and_stays(gw: GatewayProcess) -> None:
    started = start_canary(gw)
    assert production(gw) == 2
    back = call(
        gw,
        "POST",
        "/admin/rollback",
        gw.admin_key,
        {"ref": "router:bot", "to_version": 1, "reason": "incident", "emergency": True},
    )
    assert back.status_code == 201, back.text
    status = call(gw, "GET", f"/admin/rollouts/{started['id']}", gw.admin_key).json()
    assert status["state"] == "stopped", status
    traffic(gw)  # enough candidate requests for `max_sample`, had the canary gone on
    checked = call(gw, "POST", f"/admin/rollouts/{started['id']}/check", gw.admin_key).json()
    assert checked["state"] == "stopped", checked
    assert production(gw) == 1
    assert traffic(gw, 20) == {"router:bot@1"}
    actions = [e["action"] for e in call(gw, "GET", "/admin/audit?limit=1000", gw.admin_key).json()]
    assert "rollout.stop" in actions
    assert call(gw, "GET", "/admin/audit/verify", gw.admin_key).json()["ok"]


def test_an_automatic_promotion_never_moves_a_protected_alias_off_its_approved_version(
    gw: GatewayProcess,
) -> None:
    started = start_canary(gw)
    counted_traffic(gw, started["id"])
    # a database writer points the live rollout at version 3, which nobody approved
    db = sqlite3.connect(Path(gw.db_url().removeprefix("sqlite:///")))
    with db:
        db.execute("UPDATE rollouts SET candidate_version = 3 WHERE id = ?", (started["id"],))
    db.close()
    verified = gw.cli("audit", "verify", key=gw.admin_key, check=False)
    assert verified.returncode == 1, verified.stdout
    assert f"rollout {started['id']} has candidate_version 3 but the chain says 2" in verified.stderr
    checked = call(gw, "POST", f"/admin/rollouts/{started['id']}/check", gw.admin_key).json()
    assert checked["state"] == "stopped", checked
    assert production(gw) == 2
    entries = call(gw, "GET", "/admin/audit?limit=1000", gw.admin_key).json()
    promote = [e for e in entries if e["action"] == "rollout.promote"]
    assert promote and "is protected" in str(promote[0]["reason"]), promote


def test_rollout_alias_names_are_validated_and_rules_are_not_rolled_out(gw: GatewayProcess) -> None:
    for alias in ("Production", "production ", "production\u200b", "latest"):
        body = {"kind": "router", "name": "bot", "alias": alias, "candidate": 2}
        r = call(gw, "POST", "/admin/rollouts", gw.engineer, body)  # type: ignore[attr-defined]
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "alias"
    for kind, name in (("policy", "policies"), ("governance", "governance"), ("alert", "alerts")):
        body = {"kind": kind, "name": name, "candidate": 1}
        r = call(gw, "POST", "/admin/rollouts", gw.admin_key, body)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "kind"
