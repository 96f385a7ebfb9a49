"""The rollout object: start/status/stop, sticky assignment, the approval gate of a protected alias,
automatic rollback with its evidence in the audit log, exactly-once transitions."""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable

import pytest
from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import Session

from gateway.db.generation import utcnow
from gateway.db.models import AuditEntry, OnlineEvalScore, RequestLog
from gateway.errors import Conflict, InvalidRequest
from gateway.registry.promotion import PromotionService
from gateway.registry.store import VersionStore, set_alias
from gateway.registry.sync import sync
from gateway.rollouts.service import LiveRollout, RolloutService, RolloutSpec, bucket, load_live
from tests.registry.conftest import SUPPORT_QA, GitProject, People


@pytest.fixture
def project(git_project: Callable[..., GitProject], engine: Engine, people: People) -> GitProject:
    """prompt:support_qa@1 and @2; `canary` (unprotected) and `production` point at 1."""
    project = git_project({"prompts/support_qa.yaml": SUPPORT_QA})
    sync(engine, project.path, actor=people.alice.actor)
    project.write("prompts/support_qa.yaml", SUPPORT_QA.replace("SAML and OIDC", "SAML"))
    project.commit("only SAML")
    sync(engine, project.path, actor=people.alice.actor)
    with Session(engine) as s, s.begin():
        for alias in ("canary", "production"):
            set_alias(s, kind="prompt", name="support_qa", alias=alias, version=1, actor="test")
    return project


@pytest.fixture
def rollouts(engine: Engine, promotions: PromotionService) -> RolloutService:
    return RolloutService(engine, promotions)


def spec(**kw: object) -> RolloutSpec:
    base: dict[str, object] = {"kind": "prompt", "name": "support_qa", "alias": "canary", "candidate": 2}
    return RolloutSpec.model_validate(base | {"min_sample": 50, "share": 0.5} | kw)


def log_rows(engine: Engine, rollout_id: str, arm: str, n: int, errors: int) -> None:
    rows = [
        {
            "id": "req_" + secrets.token_hex(8),
            "ts": utcnow(),
            "route": "chat",
            "artifacts": [],
            "status": 502 if i < errors else 200,
            "latency_ms": 10.0,
            "attempts": [],
            "decisions": [],
            "extra": {"rollout": {"id": rollout_id, "arm": arm}},
        }
        for i in range(n)
    ]
    with Session(engine) as s, s.begin():
        s.execute(insert(RequestLog), rows)


def audit_entries(engine: Engine, prefix: str) -> list[AuditEntry]:
    with Session(engine) as s:
        return [
            e for e in s.scalars(select(AuditEntry).order_by(AuditEntry.seq)) if e.action.startswith(prefix)
        ]


def alias_version(engine: Engine, alias: str) -> int | None:
    return VersionStore(engine).aliases("prompt", "support_qa").get(("prompt", "support_qa"), {}).get(alias)


def test_assignment_is_sticky_deterministic_and_follows_the_share() -> None:
    now = utcnow()
    live = LiveRollout("rol_x", "prompt", "p", "production", 1, 2, 0.2, (), now)
    callers = [f"user-{i}" for i in range(4000)]
    arms = [live.arm_for(c, now) for c in callers]
    assert arms == [live.arm_for(c, now) for c in callers]  # sticky
    share = arms.count("candidate") / len(arms)
    assert 0.17 < share < 0.23
    # a pure function of the rollout id: another rollout assigns other callers
    assert bucket("rol_x", "user-1") == bucket("rol_x", "user-1") != bucket("rol_y", "user-1")
    # a step schedule raises the share over time, keeping the earlier canary callers in the canary
    from datetime import timedelta

    stepped = LiveRollout("rol_x", "prompt", "p", "production", 1, 2, 0.2, ((600.0, 0.5),), now)
    later = now + timedelta(seconds=601)
    assert stepped.share_at(now) == 0.2 and stepped.share_at(later) == 0.5
    early = {c for c in callers if stepped.arm_for(c, now) == "candidate"}
    assert all(stepped.arm_for(c, later) == "candidate" for c in early)


def test_worse_candidate_is_rolled_back_with_evidence(
    project: GitProject, engine: Engine, people: People, rollouts: RolloutService
) -> None:
    started = rollouts.start(people.alice, spec())
    assert started["state"] == "active" and started["control_version"] == 1
    with Session(engine) as s:
        assert load_live(s)[("prompt", "support_qa", "canary")].candidate == 2
    log_rows(engine, started["id"], "control", 60, 1)
    log_rows(engine, started["id"], "candidate", 60, 0)
    assert rollouts.check(started["id"])["state"] == "active"  # equal so far: no verdict
    log_rows(engine, started["id"], "candidate", 100, 60)
    result = rollouts.check(started["id"])
    assert result["state"] == "rolled_back"
    status = rollouts.get(started["id"])
    assert status["state"] == "rolled_back" and status["ended_at"] is not None
    [entry] = audit_entries(engine, "rollout.rollback")
    assert entry.actor.startswith("opsgate")
    [test] = entry.after["tests"]
    assert test["metric"] == "error_rate" and test["verdict"] == "worse"
    assert (test["n_control"], test["n_candidate"]) == (60, 160)
    assert test["p_value"] < 0.05 and test["test"] == "msprt_rates"
    assert alias_version(engine, "canary") == 1  # an unprotected alias never moved
    with Session(engine) as s:
        assert load_live(s) == {}
    # exactly once: a second check (another replica) does nothing more
    assert rollouts.check(started["id"])["state"] == "rolled_back"
    assert len(audit_entries(engine, "rollout.rollback")) == 1


def test_equal_candidate_is_not_rolled_back_and_better_is_promoted(
    project: GitProject, engine: Engine, people: People, rollouts: RolloutService
) -> None:
    started = rollouts.start(people.alice, spec(on_success="promote"))
    log_rows(engine, started["id"], "control", 300, 6)
    log_rows(engine, started["id"], "candidate", 300, 6)
    assert rollouts.check(started["id"])["decision"] == "continue"
    log_rows(engine, started["id"], "control", 300, 60)
    result = rollouts.check(started["id"])
    assert result["state"] == "promoted"
    assert alias_version(engine, "canary") == 2
    assert len(audit_entries(engine, "rollout.promote")) == 1


def test_one_live_rollout_per_alias_and_stop(
    project: GitProject, engine: Engine, people: People, rollouts: RolloutService
) -> None:
    started = rollouts.start(people.alice, spec())
    with pytest.raises(Conflict, match="already live"):
        rollouts.start(people.alice, spec())
    stopped = rollouts.stop(people.alice, started["id"], reason="enough")
    assert stopped["state"] == "stopped"
    with pytest.raises(Conflict, match="not live"):
        rollouts.stop(people.alice, started["id"], reason="again")
    assert rollouts.start(people.alice, spec())["state"] == "active"


def test_protected_alias_waits_for_the_promotion_and_rollback_reverts_the_alias(
    project: GitProject,
    engine: Engine,
    people: People,
    rollouts: RolloutService,
    promotions: PromotionService,
) -> None:
    started = rollouts.start(people.alice, spec(alias="production"))
    assert started["state"] == "awaiting_approval" and started["promotion_id"]
    assert promotions.get(started["promotion_id"]).state == "pending"
    with Session(engine) as s:  # before approval everyone is served the control
        waiting = load_live(s)[("prompt", "support_qa", "production")]
        assert not waiting.active and waiting.version_for("anyone", utcnow()) == (1, "control")
    assert rollouts.check(started["id"])["state"] == "awaiting_approval"
    promotions.approve(people.bob, started["promotion_id"])  # four-eyes: not alice
    assert rollouts.check(started["id"])["state"] == "active"
    assert alias_version(engine, "production") == 2
    with Session(engine) as s:
        live = load_live(s)[("prompt", "support_qa", "production")]
        assert (live.control, live.candidate) == (1, 2)  # the control still serves outside the canary
    log_rows(engine, started["id"], "control", 100, 0)
    log_rows(engine, started["id"], "candidate", 100, 50)
    assert rollouts.check(started["id"])["state"] == "rolled_back"
    assert alias_version(engine, "production") == 1
    assert [e.action for e in audit_entries(engine, "alias.rollout")] == ["alias.rollout.rollback"]


def test_rejected_promotion_rejects_the_rollout(
    project: GitProject,
    engine: Engine,
    people: People,
    rollouts: RolloutService,
    promotions: PromotionService,
) -> None:
    started = rollouts.start(people.alice, spec(alias="production"))
    promotions.reject(people.bob, started["promotion_id"], reason="not now")
    assert rollouts.check(started["id"])["state"] == "rejected"
    assert alias_version(engine, "production") == 1


def test_bad_specs_are_refused(people: People, rollouts: RolloutService) -> None:
    with pytest.raises(InvalidRequest, match="latest"):
        rollouts.start(people.alice, spec(alias="latest"))
    with pytest.raises(ValueError):
        spec(share=1.5)
    with pytest.raises(ValueError, match="canary"):
        spec(mode="mirror")
    with pytest.raises(ValueError):
        spec(metrics=[])


def score_rows(engine: Engine, rollout_id: str, arm: str, scores: list[float]) -> None:
    """Request log rows of one arm, each with an online eval score (what gateway/evaluation/online.py
    stores for a sampled request)."""
    rows, evals = [], []
    for score in scores:
        rid = "req_" + secrets.token_hex(8)
        rows.append(
            {
                "id": rid,
                "ts": utcnow(),
                "route": "chat",
                "artifacts": [],
                "status": 200,
                "latency_ms": 10.0,
                "attempts": [],
                "decisions": [],
                "extra": {"rollout": {"id": rollout_id, "arm": arm}},
            }
        )
        evals.append(
            {
                "request_id": rid,
                "ts": utcnow(),
                "prompt": "support_qa",
                "prompt_version": 2 if arm == "candidate" else 1,
                "prompt_hash": "0" * 64,
                "versions": [],
                "metric": "faithfulness",
                "score": score,
            }
        )
    with Session(engine) as s, s.begin():
        s.execute(insert(RequestLog), rows)
        s.execute(insert(OnlineEvalScore), evals)


def test_lower_online_eval_score_is_rolled_back(
    project: GitProject, engine: Engine, people: People, rollouts: RolloutService
) -> None:
    started = rollouts.start(people.alice, spec(metrics=[{"metric": "faithfulness"}]))
    rng = random.Random(3)
    score_rows(engine, started["id"], "control", [min(1.0, max(0.0, rng.gauss(0.8, 0.1))) for _ in range(80)])
    score_rows(
        engine, started["id"], "candidate", [min(1.0, max(0.0, rng.gauss(0.8, 0.1))) for _ in range(80)]
    )
    assert rollouts.check(started["id"])["decision"] == "continue"  # equal scores: no verdict
    score_rows(
        engine, started["id"], "candidate", [min(1.0, max(0.0, rng.gauss(0.6, 0.1))) for _ in range(80)]
    )
    result = rollouts.check(started["id"])
    assert result["state"] == "rolled_back"
    [test] = result["tests"]
    assert test["metric"] == "faithfulness" and test["test"] == "msprt_means"
    assert (test["n_control"], test["n_candidate"]) == (80, 160)
    assert test["mean_candidate"] < test["mean_control"]
