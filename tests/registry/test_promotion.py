"""Promotions: protected aliases move only through approved requests; rollback; races; eval rule."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from gateway.db.generation import utcnow
from gateway.db.models import EvalRun
from gateway.errors import Conflict, OpsgateError, PermissionDenied
from gateway.registry import audit
from gateway.registry.promotion import PromotionService
from gateway.registry.store import VersionStore
from gateway.registry.sync import sync
from tests.registry.conftest import BOB, SUPPORT_QA, GitProject, People, eval_rule, governance


@pytest.fixture
def two_versions(git_project: Callable[..., GitProject], engine: Engine, people: People) -> GitProject:
    """prompt:support_qa@1 and @2, both authored by Alice."""
    project = git_project({"prompts/support_qa.yaml": SUPPORT_QA})
    sync(engine, project.path, actor=people.alice.actor)
    project.write("prompts/support_qa.yaml", SUPPORT_QA.replace("SAML and OIDC", "SAML"))
    project.commit("only SAML")
    sync(engine, project.path, actor=people.alice.actor)
    return project


def alias(engine: Engine, name: str = "support_qa", which: str = "production") -> int | None:
    return VersionStore(engine).aliases("prompt", name).get(("prompt", name), {}).get(which)


def test_promotion_needs_an_approval_then_applies_at_once(
    two_versions: GitProject, engine: Engine, people: People, promotions: PromotionService
) -> None:
    request = promotions.request(
        people.alice, kind="prompt", name="support_qa", version=1, alias="production", reason="first release"
    )
    assert request.state == "pending" and alias(engine) is None

    applied = promotions.approve(people.bob, request.id, comment="looks right")
    assert applied.state == "applied" and applied.applied_at is not None
    assert alias(engine) == 1
    assert [a["by"] for a in applied.approvals] == ["bob@example.com"]
    assert {c["check"] for c in applied.checks} == {"approvals", "four_eyes"}
    actions = [e for e in _audit_actions(engine) if e.startswith(("promote", "alias"))]
    assert actions == ["promote.request", "promote.approve", "alias.promote"]


def test_self_approval_and_author_approval_are_refused(
    two_versions: GitProject, engine: Engine, people: People, promotions: PromotionService
) -> None:
    # Bob requests a version Alice wrote: Bob may not approve his own request...
    bob_as_requester = PromotionService(engine, governance())
    request = bob_as_requester.request(
        people.admin, kind="prompt", name="support_qa", version=1, alias="staging"
    )
    with pytest.raises(PermissionDenied, match=r"four-eyes: admin@example\.com requested"):
        promotions.approve(people.admin, request.id)
    # ...and Alice, the author of the commit, may not approve it even with an approver key.
    from gateway.keys import KeyService

    KeyService(engine).create(
        name="alice-approver", roles=["approver"], principal="alice@example.com", actor="t"
    )
    alice_approver = next(
        p for p in KeyService(engine).active_principals().values() if p.name == "alice-approver"
    )
    with pytest.raises(PermissionDenied, match="is the author of prompt:support_qa@1"):
        promotions.approve(alice_approver, request.id)
    assert promotions.get(request.id).state == "pending" and alias(engine, which="staging") is None
    assert promotions.approve(people.carol, request.id).state == "applied"


def test_keys_without_the_role_are_refused(
    two_versions: GitProject, engine: Engine, people: People, promotions: PromotionService
) -> None:
    with pytest.raises(PermissionDenied, match="requesting a promotion needs the role"):
        promotions.request(people.app, kind="prompt", name="support_qa", version=1, alias="production")
    request = promotions.request(
        people.alice, kind="prompt", name="support_qa", version=1, alias="production"
    )
    with pytest.raises(PermissionDenied, match="approving a promotion needs the role approver or admin"):
        promotions.approve(people.alice, request.id)
    with pytest.raises(PermissionDenied):
        promotions.approve(people.app, request.id)
    assert alias(engine) is None


def test_admins_obey_the_rules_too(
    two_versions: GitProject, engine: Engine, people: People, promotions: PromotionService
) -> None:
    request = promotions.request(
        people.admin, kind="prompt", name="support_qa", version=2, alias="production"
    )
    assert request.state == "pending"  # no shortcut for an admin
    with pytest.raises(PermissionDenied, match="four-eyes"):
        promotions.approve(people.admin, request.id)
    assert alias(engine) is None


def test_reject_needs_a_reason_and_frees_the_alias(
    two_versions: GitProject, engine: Engine, people: People, promotions: PromotionService
) -> None:
    request = promotions.request(
        people.alice, kind="prompt", name="support_qa", version=1, alias="production"
    )
    with pytest.raises(OpsgateError, match="needs a reason"):
        promotions.reject(people.bob, request.id, reason=" ")
    rejected = promotions.reject(people.bob, request.id, reason="wrong price")
    assert rejected.state == "rejected" and rejected.decision_reason == "wrong price"
    with pytest.raises(Conflict, match="is rejected, not pending"):
        promotions.approve(people.carol, request.id)
    assert alias(engine) is None
    again = promotions.request(people.alice, kind="prompt", name="support_qa", version=2, alias="production")
    assert again.state == "pending"


def test_missing_eval_run_is_refused_and_a_passing_run_satisfies_the_rule(
    two_versions: GitProject, engine: Engine, people: People
) -> None:
    service = PromotionService(engine, governance(production=eval_rule("support_qa")))
    with pytest.raises(Conflict) as refused:
        service.request(people.alice, kind="prompt", name="support_qa", version=2, alias="production")
    assert refused.value.code == "eval_required" and "suite 'support_qa'" in refused.value.message

    def add_run(passed: bool, version: int, *, audited: bool = True) -> str:
        """A run as gateway/evaluation/store.py saves it (with its `eval.run` entry), or, audited=False, as
        a database writer would insert it."""
        run_id = "run_" + secrets.token_hex(4)

        def work(s: Session) -> None:
            s.add(
                EvalRun(
                    id=run_id,
                    suite="support_qa",
                    target_kind="prompt",
                    target_name="support_qa",
                    target_version=version,
                    target_hash=None,
                    versions=[],
                    status="finished",
                    cases=1,
                    errors=0,
                    tool_versions={},
                    passed=passed,
                    started_at=utcnow(),
                    finished_at=utcnow(),
                    summary={},
                    created_by="test",
                )
            )
            if audited:
                audit.append(
                    s,
                    actor="test",
                    action="eval.run",
                    target=f"prompt:support_qa@{version}",
                    after={"run": run_id, "suite": "support_qa", "passed": passed},
                )

        audit.write_transaction(engine, work)
        return run_id

    add_run(False, 2)  # a failing run does not count
    add_run(True, 1)  # nor does a passing run of another version
    with pytest.raises(Conflict):
        service.request(people.alice, kind="prompt", name="support_qa", version=2, alias="production")
    add_run(True, 2, audited=False)  # nor a passing run the audit chain does not record
    with pytest.raises(Conflict, match="the audit chain does not record as passed"):
        service.request(people.alice, kind="prompt", name="support_qa", version=2, alias="production")
    run_id = add_run(True, 2)
    request = service.request(people.alice, kind="prompt", name="support_qa", version=2, alias="production")
    applied = service.approve(people.bob, request.id)
    assert applied.state == "applied"
    assert {"check": "eval", "suite": "support_qa", "run": run_id, "passed": True} in applied.checks


def test_unprotected_alias_moves_at_once_and_latest_cannot_be_promoted(
    two_versions: GitProject, engine: Engine, people: People, promotions: PromotionService
) -> None:
    record = promotions.request(people.alice, kind="prompt", name="support_qa", version=1, alias="canary")
    assert record.state == "applied" and alias(engine, which="canary") == 1
    with pytest.raises(OpsgateError, match="moves by itself"):
        promotions.request(people.alice, kind="prompt", name="support_qa", version=1, alias="latest")


def test_rollback_is_a_promotion_and_emergency_rollback_is_admin_only(
    two_versions: GitProject, engine: Engine, people: People, promotions: PromotionService
) -> None:
    for version in (1, 2):
        promotions.approve(
            people.bob,
            promotions.request(
                people.alice, kind="prompt", name="support_qa", version=version, alias="production"
            ).id,
        )
    assert alias(engine) == 2

    normal = promotions.rollback(
        people.alice, kind="prompt", name="support_qa", to_version=1, reason="bad answers"
    )
    assert normal.state == "pending" and normal.action == "rollback" and alias(engine) == 2
    with pytest.raises(PermissionDenied, match="emergency rollback needs the role admin"):
        promotions.rollback(
            people.bob, kind="prompt", name="support_qa", to_version=1, reason="x", emergency=True
        )

    emergency = promotions.rollback(
        people.admin, kind="prompt", name="support_qa", to_version=1, reason="incident 42", emergency=True
    )
    assert emergency.state == "applied" and alias(engine) == 1
    assert promotions.get(normal.id).state == "rejected"  # superseded, not left pending
    assert promotions.get(normal.id).decision_reason == "superseded by an emergency rollback"
    entries = _audit_entries(engine)
    last = entries[-1]
    assert last["action"] == "alias.rollback.emergency" and last["reason"] == "incident 42"
    assert last["before"] == {"version": 2} and last["after"] == {"version": 1}
    assert audit.verify(engine).ok


def test_racing_promotions_of_one_alias_one_wins_the_others_get_a_clear_error(
    two_versions: GitProject, engine: Engine, people: People, promotions: PromotionService
) -> None:
    results: list[object] = []

    def attempt(version: int) -> None:
        try:
            results.append(
                promotions.request(
                    people.alice, kind="prompt", name="support_qa", version=version, alias="production"
                )
            )
        except OpsgateError as exc:
            results.append(exc)

    threads = [threading.Thread(target=attempt, args=(1 + i % 2,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wins = [r for r in results if not isinstance(r, OpsgateError)]
    losses = [r for r in results if isinstance(r, OpsgateError)]
    assert len(wins) == 1 and len(losses) == 7
    assert all(isinstance(e, Conflict) and e.code == "promotion_pending" for e in losses)

    # Racing approvals of the one pending request: exactly one applies it.
    approvals: list[object] = []

    def approve(principal_name: str) -> None:
        principal = getattr(people, principal_name)
        try:
            approvals.append(promotions.approve(principal, wins[0].id))  # type: ignore[attr-defined]
        except OpsgateError as exc:
            approvals.append(exc)

    threads = [threading.Thread(target=approve, args=(n,)) for n in ("bob", "carol")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    applied = [a for a in approvals if not isinstance(a, OpsgateError)]
    assert len(applied) == 1 and isinstance(
        next(a for a in approvals if isinstance(a, OpsgateError)), Conflict
    )
    assert alias(engine) == wins[0].version  # type: ignore[attr-defined]
    assert audit.verify(engine).ok


def test_author_matching_uses_the_commit_email(
    git_project: Callable[..., GitProject], engine: Engine, people: People, promotions: PromotionService
) -> None:
    project = git_project({"prompts/support_qa.yaml": SUPPORT_QA}, author=BOB)
    sync(engine, project.path, actor=people.alice.actor)
    request = promotions.request(
        people.alice, kind="prompt", name="support_qa", version=1, alias="production"
    )
    with pytest.raises(PermissionDenied, match=r"bob@example.com is the author"):
        promotions.approve(people.bob, request.id)
    assert promotions.approve(people.carol, request.id).state == "applied"


def _audit_entries(engine: Engine) -> list[dict[str, object]]:
    from sqlalchemy import select

    from gateway.db.models import AuditEntry

    with Session(engine) as s:
        return [
            {"action": r.action, "reason": r.reason, "before": r.before, "after": r.after}
            for r in s.scalars(select(AuditEntry).order_by(AuditEntry.seq))
        ]


def _audit_actions(engine: Engine) -> list[str]:
    return [str(e["action"]) for e in _audit_entries(engine)]
