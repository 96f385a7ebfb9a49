"""Issue 11 (10) retried with other fields: loosening was judged field by field from a fixed list, and a
lower number always counted as stricter. So lowering a budget's `reserve_output_tokens` (fewer dollars
reserved before a call: more calls pass), evaluating alert rules once an hour instead of every 15 s, or
dropping a receiver's retries or its HMAC secret were promoted with one approver's approval. Now every
changed field loosens unless it is known to be stricter in that direction (gateway/registry/rules.py), so
these need an admin other than the requester. Real gateway, real git.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import GatewayProcess, commit_project
from tests.security.test_governance_rules_governed import admin, new_key

POLICIES = """\
rules:
  - name: spend
    checks:
      - {type: budget, usd_per_day: 5, reserve_output_tokens: 1024}
"""
ALERTS = """\
evaluate_every_s: 15
receivers:
  oncall: {url: "http://127.0.0.1:9/hook", secret_env: ONCALL_HMAC_SECRET, retries: 5}
rules:
  - {name: errors, metric: error_rate, op: ">", threshold: 0.05, receivers: [oncall]}
"""

CHANGES = {
    "budget reserve lowered": (
        "config/policies.yaml",
        POLICIES.replace("reserve_output_tokens: 1024", "reserve_output_tokens: 0"),
        "policy:policies",
        "reserve_output_tokens 1024 -> 0",
    ),
    "alerts evaluated hourly": (
        "config/alerts.yaml",
        ALERTS.replace("evaluate_every_s: 15", "evaluate_every_s: 3600"),
        "alert:alerts",
        "evaluate_every_s 15.0 -> 3600.0",
    ),
    "receiver retries dropped": (
        "config/alerts.yaml",
        ALERTS.replace("retries: 5", "retries: 0"),
        "alert:alerts",
        "receiver 'oncall': retries 5 -> 0",
    ),
    "receiver secret dropped": (
        "config/alerts.yaml",
        ALERTS.replace(", secret_env: ONCALL_HMAC_SECRET", ""),
        "alert:alerts",
        "receiver 'oncall': secret_env 'ONCALL_HMAC_SECRET' -> None",
    ),
}


@pytest.fixture(scope="module")
def gateway(project_factory: ProjectFactory, gateway_factory: GatewayFactory) -> GatewayProcess:
    project = project_factory(files={"config/policies.yaml": POLICIES, "config/alerts.yaml": ALERTS})
    gw = gateway_factory(project, env={"ONCALL_HMAC_SECRET": "s3cret"})
    gw.project = project  # type: ignore[attr-defined]
    gw.alice = new_key(gw, "alice@example.com", ["admin"])  # type: ignore[attr-defined]
    gw.bob = new_key(gw, "bob@example.com", ["approver"])  # type: ignore[attr-defined]
    return gw


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_loosening_field_needs_a_second_admin(gateway: GatewayProcess, change: str) -> None:
    path, text, target, line = CHANGES[change]
    project: Path = gateway.project  # type: ignore[attr-defined]
    alice: str = gateway.alice  # type: ignore[attr-defined]
    original = (project / path).read_text(encoding="utf-8")
    (project / path).write_text(text, encoding="utf-8")
    commit_project(project, change, author=("Alice", "alice@example.com"))
    synced = admin(gateway, "POST", "/admin/sync", alice, {})
    assert synced.status_code == 200, synced.text
    latest = admin(gateway, "GET", f"/admin/artifacts/{target.replace(':', '/')}/versions/latest", alice)
    version = latest.json()["version"]
    request = admin(
        gateway, "POST", "/admin/promotions", alice, {"ref": f"{target}@{version}", "to": "production"}
    )
    assert request.status_code == 201, request.text
    rule = request.json()["rule"]
    assert rule["approver_roles"] == ["admin"], rule
    assert any(line in loosened for loosened in rule.get("loosens", [])), rule
    pid = request.json()["id"]
    refused = admin(gateway, "POST", f"/admin/promotions/{pid}/approve", gateway.bob, {})  # type: ignore[attr-defined]
    assert refused.status_code == 403, refused.text
    # put things back for the next case: reject, and restore the file
    assert (
        admin(gateway, "POST", f"/admin/promotions/{pid}/reject", alice, {"reason": "test"}).status_code
        == 200
    )
    (project / path).write_text(original, encoding="utf-8")
    commit_project(project, f"undo {change}", author=("Alice", "alice@example.com"))


def test_an_emergency_rollback_that_loosens_rules_is_refused(gateway: GatewayProcess) -> None:
    """Checked, held: an admin's emergency rollback (applied at once, no second pair of eyes) of policy rules
    to an earlier, looser version is refused with 409 loosens_rules; a normal rollback request is the way."""
    project: Path = gateway.project  # type: ignore[attr-defined]
    alice: str = gateway.alice  # type: ignore[attr-defined]
    served = admin(gateway, "GET", "/admin/artifacts/policy/policies/versions/production", alice).json()[
        "version"
    ]
    stricter = POLICIES + "  - name: words\n    checks:\n      - {type: deny_list, terms: [forbidden-word]}\n"
    (project / "config" / "policies.yaml").write_text(stricter, encoding="utf-8")
    commit_project(project, "a deny list", author=("Alice", "alice@example.com"))
    assert admin(gateway, "POST", "/admin/sync", alice, {}).status_code == 200
    version = admin(gateway, "GET", "/admin/artifacts/policy/policies/versions/latest", alice).json()[
        "version"
    ]
    request = admin(
        gateway, "POST", "/admin/promotions", alice, {"ref": f"policy:policies@{version}", "to": "production"}
    )
    assert "loosens" not in request.json()["rule"], request.text  # tightening: an approver suffices
    done = admin(gateway, "POST", f"/admin/promotions/{request.json()['id']}/approve", gateway.bob, {})  # type: ignore[attr-defined]
    assert done.status_code == 200 and done.json()["state"] == "applied", done.text

    back = admin(
        gateway,
        "POST",
        "/admin/rollback",
        alice,
        {"ref": "policy:policies", "to_version": served, "reason": "incident", "emergency": True},
    )
    assert back.status_code == 409, back.text
    assert (
        back.json()["error"]["code"] == "loosens_rules"
        and "rule 'words' removed" in back.json()["error"]["message"]
    )
