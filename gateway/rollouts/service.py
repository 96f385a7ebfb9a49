"""Rollouts: a candidate version of any artifact meets an alias's live traffic, judged as it goes.

    start ──► awaiting_approval ──(its promotion is applied)──► active ──► rolled_back | promoted | held
                     └──(promotion rejected)──► rejected          └──(operator)──► stopped

Assignment is sticky and shared by replicas without coordination: a caller (the request's `user` field,
else the key's principal) is in the candidate arm when ``sha256(rollout id : caller)`` falls under the
current share, and the share is a pure function of the time since activation (the step schedule). The
arm is written on the request's log row (``extra.rollout``), so the evaluator judges each arm from the
request log (error rate, latency) and the online eval scores (any metric of the prompt's online_eval).

Protected aliases: starting a rollout there is a promotion. ``start`` files a promotion request for
the candidate to that alias (gateway/registry/promotion.py: the alias's approvals, four-eyes and eval
rule apply unchanged); the rollout waits until it is applied. From then the alias names the candidate
but the rollout keeps serving the previous version (the control) to everyone outside the canary share.
An automatic rollback moves the alias back to the control version without approval (the previous
version was approved before) and audits the evidence; promotion on success is then already approved.
On an unprotected alias the alias stays on the control until the rollout promotes the candidate.

Decisions are exactly-once across replicas: each transition is a compare-and-set on the row's state in
the same transaction as its audit entry, and on PostgreSQL the evaluator runs under an advisory lock
(gateway/db/locks.py) so replicas do not repeat the reads.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NamedTuple

from pydantic import Field
from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.db.generation import as_utc, bump_generation, utcnow
from gateway.db.models import Alias, ArtifactVersion, Promotion, Rollout
from gateway.errors import Conflict, InvalidRequest, NotFound, PermissionDenied
from gateway.keys import Principal
from gateway.registry import audit
from gateway.registry.promotion import APPLIED, REJECTED, PromotionService
from gateway.registry.refs import validate_alias
from gateway.registry.rules import RULE_KINDS
from gateway.registry.store import LATEST, set_alias
from gateway.rollouts.judge import BUILTIN_METRICS, judge, read_arms
from gateway.rollouts.stats import Direction, TestResult
from gateway.yamlspec import StrictModel

AWAITING, ACTIVE = "awaiting_approval", "active"
ROLLED_BACK, PROMOTED, HELD, STOPPED, REJECTED_STATE = (
    "rolled_back",
    "promoted",
    "held",
    "stopped",
    "rejected",
)
LIVE = (AWAITING, ACTIVE, HELD)
SYSTEM_ACTOR = "opsgate (rollout evaluator)"


class Step(StrictModel):
    after_s: float = Field(ge=0, description="Seconds after activation from which this share applies.")
    share: float = Field(gt=0, le=1)


class MetricSpec(StrictModel):
    metric: str = Field(
        description="error_rate, latency_ms, latency_p50|p95|p99, cost_usd; for classic models accuracy,"
        " abs_error, prediction_drift; or an online eval metric name (gateway/rollouts/judge.py)."
    )
    direction: Direction | None = Field(None, description="Which way is worse (default: by metric).")

    @property
    def worse(self) -> Direction:
        return self.direction or BUILTIN_METRICS.get(self.metric, "lower")


class RolloutSpec(StrictModel):
    kind: str
    name: str
    alias: str = "production"
    candidate: int = Field(ge=1)
    mode: Literal["canary", "shadow"] = Field(
        "canary",
        description="canary: `share` of callers are served the candidate; shadow: every caller is served the"
        " control, and the candidate also answers a `share` of requests off the request path (never returned).",
    )
    share: float = Field(0.1, gt=0, le=1, description="canary: share of callers; shadow: share of requests.")
    schedule: list[Step] = Field(default_factory=list)
    metrics: list[MetricSpec] = Field(default_factory=lambda: [MetricSpec(metric="error_rate")], min_length=1)
    min_sample: int = Field(100, ge=2, description="Per arm, before any verdict.")
    max_sample: int | None = Field(
        None, ge=2, description="Candidate requests after which a candidate not found worse succeeds."
    )
    alpha: float = Field(0.05, gt=0, lt=1)
    interval_s: float = Field(60.0, gt=0)
    on_fail: Literal["rollback"] = "rollback"
    on_success: Literal["promote", "hold"] = "hold"
    reason: str | None = None


@dataclass(frozen=True)
class LiveRollout:
    """What the request path needs: a pure function from (caller, now) to the version that serves."""

    id: str
    kind: str
    name: str
    alias: str
    control: int
    candidate: int
    share: float
    schedule: tuple[tuple[float, float], ...]
    activated_at: datetime
    active: bool = True  # False while awaiting approval: everyone gets the control
    mode: str = "canary"  # shadow: the live answer is always the control's
    approved: bool = False  # started through a promotion (a protected alias): the candidate was approved

    def share_at(self, now: datetime) -> float:
        if not self.active:
            return 0.0
        elapsed = (now - self.activated_at).total_seconds()
        share = self.share
        for after_s, step_share in self.schedule:
            if elapsed >= after_s:
                share = step_share
        return share

    def arm_for(self, caller: str, now: datetime) -> str:
        if self.mode == "shadow":
            return "control"
        return "candidate" if bucket(self.id, caller) < self.share_at(now) else "control"

    def shadowed(self, request_id: str, now: datetime) -> bool:
        """Whether the candidate also answers this request off the path (shadow mode): a deterministic
        sample of requests, the share following the schedule like a canary's."""
        return self.mode == "shadow" and bucket(self.id, request_id) < self.share_at(now)

    def version_for(self, caller: str, now: datetime) -> tuple[int, str]:
        arm = self.arm_for(caller, now)
        return (self.candidate if arm == "candidate" else self.control), arm


class Assignment(NamedTuple):
    """Which arm of a live rollout serves a request."""

    rollout: LiveRollout
    arm: str

    def tag(self, kind: str, name: str) -> dict[str, Any]:
        """What the log row says (`extra.rollout`): the evaluator reads the arms from it."""
        return {"id": self.rollout.id, "arm": self.arm, "target": f"{kind}:{name}"}


def bucket(rollout_id: str, caller: str) -> float:
    """A caller's place in [0, 1) for this rollout: deterministic, the same on every replica."""
    digest = hashlib.sha256(f"{rollout_id}:{caller}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def load_live(session: Session) -> dict[tuple[str, str, str], LiveRollout]:
    """Live canaries by (kind, name, alias), for the catalog snapshot. One awaiting approval serves
    the control to everyone: when its promotion moves the alias, the candidate still waits for the
    evaluator to activate the rollout, instead of taking all the traffic meanwhile."""
    out: dict[tuple[str, str, str], LiveRollout] = {}
    rows = session.scalars(select(Rollout).where(Rollout.state.in_(LIVE)))
    for row in rows:
        steps = tuple(sorted((float(s["after_s"]), float(s["share"])) for s in row.spec.get("schedule", [])))
        out[(row.kind, row.name, row.alias)] = LiveRollout(
            row.id,
            row.kind,
            row.name,
            row.alias,
            row.control_version,
            row.candidate_version,
            row.share,
            steps,
            as_utc(row.activated_at or row.started_at),
            row.state != AWAITING,
            row.mode,
            row.promotion_id is not None,
        )
    return out


def record(row: Rollout) -> dict[str, Any]:
    def iso(value: datetime | None) -> str | None:
        return as_utc(value).isoformat() if value else None

    return {
        "id": row.id,
        "kind": row.kind,
        "name": row.name,
        "alias": row.alias,
        "control_version": row.control_version,
        "candidate_version": row.candidate_version,
        "mode": row.mode,
        "share": row.share,
        "state": row.state,
        "promotion_id": row.promotion_id,
        "started_by": row.started_by,
        "started_at": iso(row.started_at),
        "activated_at": iso(row.activated_at),
        "ended_at": iso(row.ended_at),
        "spec": row.spec,
        "last_check": row.last_check,
    }


class RolloutService:
    def __init__(self, engine: Engine, promotions: PromotionService) -> None:
        self.engine = engine
        self.promotions = promotions

    # -- queries -------------------------------------------------------------------------------------

    def get(self, rollout_id: str) -> dict[str, Any]:
        with Session(self.engine) as s:
            row = s.get(Rollout, rollout_id)
            if row is None:
                raise NotFound(f"no rollout {rollout_id!r} (see `opsgate rollout status`)")
            return record(row)

    def list_rollouts(self, *, live_only: bool = False) -> list[dict[str, Any]]:
        with Session(self.engine) as s:
            q = select(Rollout).order_by(Rollout.started_at.desc())
            if live_only:
                q = q.where(Rollout.state.in_(LIVE))
            return [record(r) for r in s.scalars(q)]

    def panel(self, *, limit: int = 20, now: datetime | None = None) -> dict[str, Any]:
        """What a dashboard panel shows: the live rollouts and the most recent ended ones, each with
        its share now, its arms' versions and request counts, and one line per judging metric from the
        last check (the same figures as the status API, flattened)."""
        now = now or utcnow()
        with Session(self.engine) as s:
            live_rows = list(
                s.scalars(select(Rollout).where(Rollout.state.in_(LIVE)).order_by(Rollout.started_at.desc()))
            )
            ended = list(
                s.scalars(
                    select(Rollout)
                    .where(Rollout.state.not_in(LIVE))
                    .order_by(Rollout.started_at.desc())
                    .limit(limit)
                )
            )
            live = load_live(s)
        items = []
        for row in [*live_rows, *ended]:
            current = live.get((row.kind, row.name, row.alias))
            items.append(
                _panel_item(
                    record(row), current if current is not None and current.id == row.id else None, now
                )
            )
        return {"generated_at": now.isoformat(), "live": len(live_rows), "rollouts": items}

    # -- commands ------------------------------------------------------------------------------------

    def start(self, principal: Principal, spec: RolloutSpec) -> dict[str, Any]:
        if not principal.has_role(*self.promotions.governance.requester_roles):
            raise PermissionDenied(
                f"starting a rollout needs the role {' or '.join(self.promotions.governance.requester_roles)}"
            )
        validate_alias(spec.alias)
        if spec.alias == LATEST:
            raise InvalidRequest(
                "the alias 'latest' moves by itself; roll out to another alias", param="alias"
            )
        if spec.kind in RULE_KINDS:
            raise InvalidRequest(
                f"{spec.kind} rules are served whole from their production version and change only by"
                " promotion (a loosening change needs a second admin): request a promotion instead of a"
                " rollout",
                param="kind",
            )
        rule = self.promotions.rule_for(spec.alias)
        rollout_id = "rol_" + secrets.token_hex(6)
        target = f"{spec.kind}:{spec.name}@{spec.alias}"

        def work(session: Session) -> dict[str, Any]:
            live = session.scalars(select(Rollout.id).where(Rollout.live_key == target)).first()
            if live is not None:
                raise Conflict(
                    f"a rollout of {target} is already live ({live}); stop it first", code="rollout_live"
                )
            control = _alias_version(session, spec.kind, spec.name, spec.alias)
            if control is None:
                raise Conflict(f"{target} does not exist: a rollout needs a version serving the alias")
            _require_version(session, spec.kind, spec.name, spec.candidate)
            if control == spec.candidate:
                raise Conflict(f"{target} already serves version {spec.candidate}", code="no_change")
            now = utcnow()
            row = Rollout(
                id=rollout_id,
                kind=spec.kind,
                name=spec.name,
                alias=spec.alias,
                control_version=control,
                candidate_version=spec.candidate,
                mode=spec.mode,
                share=spec.share,
                spec=spec.model_dump(mode="json"),
                state=AWAITING if rule is not None else ACTIVE,
                started_by=principal.principal,
                started_at=now,
                activated_at=None if rule is not None else now,
                live_key=target,
            )
            session.add(row)
            try:
                session.flush()
            except IntegrityError as exc:  # the unique live_key: another rollout of this alias is live
                raise Conflict(
                    f"a rollout of {target} is already live; stop it first", code="rollout_live"
                ) from exc
            audit.append(
                session,
                actor=principal.actor,
                action="rollout.start",
                target=target,
                before={"version": control},
                after={
                    "rollout": rollout_id,
                    "candidate": spec.candidate,
                    "share": spec.share,
                    "mode": spec.mode,
                    "spec": row.spec,
                },
                reason=spec.reason,
            )
            bump_generation(session)
            return record(row)

        out = audit.write_transaction(self.engine, work)
        if rule is None:
            return out
        return self._request_promotion(principal, spec, rollout_id)

    def _request_promotion(self, principal: Principal, spec: RolloutSpec, rollout_id: str) -> dict[str, Any]:
        """The approval gate of a protected alias: a promotion request for the candidate."""
        try:
            promotion = self.promotions.request(
                principal,
                kind=spec.kind,
                name=spec.name,
                version=spec.candidate,
                alias=spec.alias,
                reason=f"rollout {rollout_id}" + (f": {spec.reason}" if spec.reason else ""),
            )
        except Exception:
            self._end(
                rollout_id,
                (AWAITING,),
                STOPPED,
                principal.actor,
                "rollout.stop",
                {"reason": "promotion refused"},
            )
            raise
        with Session(self.engine) as s, s.begin():
            s.execute(update(Rollout).where(Rollout.id == rollout_id).values(promotion_id=promotion.id))
        self.activate_if_approved(rollout_id)
        return self.get(rollout_id)

    def activate_if_approved(self, rollout_id: str) -> str:
        """Move an awaiting rollout on once its promotion is decided; returns its state."""

        def work(session: Session) -> str:
            row = session.get(Rollout, rollout_id)
            if row is None or row.state != AWAITING or row.promotion_id is None:
                return row.state if row is not None else "missing"
            promotion = session.get(Promotion, row.promotion_id)
            if promotion is None:
                return row.state
            if promotion.state == APPLIED:
                _cas(session, row, AWAITING, ACTIVE, activated_at=utcnow())
                audit.append(
                    session,
                    actor=SYSTEM_ACTOR,
                    action="rollout.activate",
                    target=_target(row),
                    after={"rollout": row.id, "promotion": promotion.id, "approvals": promotion.approvals},
                )
                bump_generation(session)
            elif promotion.state == REJECTED:
                _cas(session, row, AWAITING, REJECTED_STATE, ended_at=utcnow(), live_key=None)
                audit.append(
                    session,
                    actor=SYSTEM_ACTOR,
                    action="rollout.reject",
                    target=_target(row),
                    after={"rollout": row.id, "promotion": promotion.id},
                )
            return row.state

        return audit.write_transaction(self.engine, work)

    def stop(self, principal: Principal, rollout_id: str, *, reason: str) -> dict[str, Any]:
        """An operator ends a live rollout: the candidate serves no more traffic, and an alias this
        rollout moved to the candidate goes back to the control version."""
        if not reason.strip():
            raise InvalidRequest("stopping a rollout needs a reason", param="reason")
        if not principal.has_role(*self.promotions.governance.requester_roles):
            raise PermissionDenied("stopping a rollout needs a role that may request promotions")
        self._end(rollout_id, LIVE, STOPPED, principal.actor, "rollout.stop", {"reason": reason}, revert=True)
        return self.get(rollout_id)

    def _end(
        self,
        rollout_id: str,
        from_states: tuple[str, ...],
        to_state: str,
        actor: str,
        action: str,
        evidence: dict[str, Any],
        *,
        revert: bool = False,
        promote: bool = False,
    ) -> bool:
        """One transition out of a live state, with its audit entry; False if another replica won."""

        def work(session: Session) -> bool:
            row = session.get(Rollout, rollout_id)
            if row is None:
                raise NotFound(f"no rollout {rollout_id!r} (see `opsgate rollout status`)")
            if row.state not in from_states:
                if action == "rollout.stop":
                    raise Conflict(f"rollout {rollout_id} is {row.state}, not live", code="not_live")
                return False
            before_state = row.state
            alias_now = _alias_version(session, row.kind, row.name, row.alias)
            facts = dict(evidence)
            state, moving = to_state, promote
            if promote and alias_now != row.candidate_version and self.promotions.rule_for(row.alias):
                # a protected alias moves only by an applied promotion: an automatic promotion never
                # moves it there, whatever this row says (it names the candidate once approved)
                state = STOPPED
                facts["reason"] = (
                    f"{_target(row)} is protected and points at {alias_now}, not the candidate"
                    f" {row.candidate_version}: request a promotion"
                )
                moving = False
            _cas(session, row, before_state, state, ended_at=utcnow(), live_key=None)
            moved = None
            if revert and alias_now == row.candidate_version:
                set_alias(
                    session,
                    kind=row.kind,
                    name=row.name,
                    alias=row.alias,
                    version=row.control_version,
                    actor=actor,
                    action=f"alias.{action}",
                    reason=f"rollout {row.id}",
                )
                moved = row.control_version
            if moving and alias_now != row.candidate_version:
                set_alias(
                    session,
                    kind=row.kind,
                    name=row.name,
                    alias=row.alias,
                    version=row.candidate_version,
                    actor=actor,
                    action=f"alias.{action}",
                    reason=f"rollout {row.id}",
                )
                moved = row.candidate_version
            audit.append(
                session,
                actor=actor,
                action=action,
                target=_target(row),
                before={"state": before_state, "version": alias_now},
                after={"rollout": row.id, "state": state, "alias_version": moved or alias_now, **facts},
                reason=str(facts.get("reason")) if facts.get("reason") else None,
            )
            bump_generation(session)
            return True

        return audit.write_transaction(self.engine, work)

    # -- evaluation ----------------------------------------------------------------------------------

    def check(self, rollout_id: str, *, now: datetime | None = None) -> dict[str, Any]:
        """One evaluation of a live rollout: read both arms, run the sequential test per metric, act."""
        state = self.activate_if_approved(rollout_id)
        if state != ACTIVE:
            return {"rollout": rollout_id, "state": state}
        with Session(self.engine) as s:
            row = s.get(Rollout, rollout_id)
            assert row is not None
            spec = RolloutSpec.model_validate(row.spec)
            arms = read_arms(s, row.id, row.activated_at or row.started_at)
            judged = [
                judge(s, m.metric, m.worse, arms, alpha=spec.alpha, min_sample=spec.min_sample)
                for m in spec.metrics
            ]
        results = [j.result for j in judged]
        evidence = {
            "checked_at": (now or utcnow()).isoformat(),
            "requests": {"control": len(arms["control"]), "candidate": len(arms["candidate"])},
            "tests": [j.evidence(m.metric) for m, j in zip(spec.metrics, judged, strict=True)],
        }
        worse = [r for r in results if r.verdict == "worse"]
        decision = "continue"
        if worse:
            decision = ROLLED_BACK
            self._end(
                rollout_id, (ACTIVE,), ROLLED_BACK, SYSTEM_ACTOR, "rollout.rollback", evidence, revert=True
            )
        elif _succeeded(results, spec, len(arms["candidate"])):
            decision = PROMOTED if spec.on_success == "promote" else HELD
            if decision == PROMOTED:
                self._end(
                    rollout_id, (ACTIVE,), PROMOTED, SYSTEM_ACTOR, "rollout.promote", evidence, promote=True
                )
                decision = self.get(rollout_id)["state"]  # stopped: a protected alias not on the candidate
            else:
                self._hold(rollout_id, evidence)
        evidence["decision"] = decision
        with Session(self.engine) as s, s.begin():
            s.execute(update(Rollout).where(Rollout.id == rollout_id).values(last_check=evidence))
        return {"rollout": rollout_id, "state": decision if decision != "continue" else ACTIVE, **evidence}

    def _hold(self, rollout_id: str, evidence: dict[str, Any]) -> None:
        def work(session: Session) -> None:
            row = session.get(Rollout, rollout_id)
            if row is None or row.state != ACTIVE:
                return
            _cas(session, row, ACTIVE, HELD)
            audit.append(
                session, actor=SYSTEM_ACTOR, action="rollout.hold", target=_target(row), after=evidence
            )

        audit.write_transaction(self.engine, work)

    def check_all(self) -> list[dict[str, Any]]:
        with Session(self.engine) as s:
            ids = list(s.scalars(select(Rollout.id).where(Rollout.state.in_((AWAITING, ACTIVE)))))
        return [self.check(i) for i in ids]


# -- helpers ---------------------------------------------------------------------------------------------


def _panel_item(rec: dict[str, Any], live: LiveRollout | None, now: datetime) -> dict[str, Any]:
    check = rec.get("last_check") or {}
    return {
        "id": rec["id"],
        "target": f"{rec['kind']}:{rec['name']}@{rec['alias']}",
        "mode": rec["mode"],
        "state": rec["state"],
        "control_version": rec["control_version"],
        "candidate_version": rec["candidate_version"],
        "share": rec["share"],
        "share_now": live.share_at(now) if live is not None else 0.0,
        "started_by": rec["started_by"],
        "started_at": rec["started_at"],
        "activated_at": rec["activated_at"],
        "ended_at": rec["ended_at"],
        "promotion_id": rec["promotion_id"],
        "checked_at": check.get("checked_at"),
        "decision": check.get("decision"),
        "requests": check.get("requests", {"control": 0, "candidate": 0}),
        "metrics": [
            {
                k: t.get(k)
                for k in (
                    "metric", "verdict", "mean_control", "mean_candidate", "value_control", "value_candidate",
                    "n_control", "n_candidate", "p_value", "test", "alpha",
                )
                if k in t
            }
            for t in check.get("tests", [])
        ],
    }  # fmt: skip


def _target(row: Rollout) -> str:
    return f"{row.kind}:{row.name}@{row.alias}"


def _cas(session: Session, row: Rollout, expected: str, new: str, **values: Any) -> None:
    """Compare-and-set the state: a racing replica's transition fails here instead of doubling."""
    done = session.execute(
        update(Rollout).where(Rollout.id == row.id, Rollout.state == expected).values(state=new, **values)
    )
    if done.rowcount != 1:  # type: ignore[attr-defined]
        raise Conflict(f"rollout {row.id} changed state concurrently", code="rollout_raced")
    session.refresh(row)


def _alias_version(session: Session, kind: str, name: str, alias: str) -> int | None:
    row = session.get(Alias, (kind, name, alias))
    return row.version if row is not None else None


def _require_version(session: Session, kind: str, name: str, version: int) -> None:
    found = session.scalars(
        select(ArtifactVersion.version).where(
            ArtifactVersion.kind == kind, ArtifactVersion.name == name, ArtifactVersion.version == version
        )
    ).first()
    if found is None:
        raise NotFound(f"{kind}:{name}@{version} does not exist (see `opsgate show {kind}:{name}`)")


def _succeeded(results: list[TestResult], spec: RolloutSpec, candidate_n: int) -> bool:
    if any(r.verdict == "better" for r in results):
        return True
    return spec.max_sample is not None and candidate_n >= spec.max_sample
