"""Promotions: the only way a protected alias moves.

    request ──► pending ──(approvals reach the rule)──► applied
                   └──(an approver rejects)──────────► rejected

A rule per protected alias (config/gateway.yaml `governance.protected_aliases`) sets how many approvals
are needed, which roles approve, four-eyes (neither the version's author nor the requester may approve),
and optionally a passing run of a named eval suite for the version. The approval that completes the
rule applies the move at once. At most one promotion per alias is pending (a unique key enforces it), and
applying compares-and-sets the alias, so racing promotions cannot corrupt state: one wins, the other
gets a 409. Every step writes an audit entry in the same transaction.

Rollback is a promotion back to another version; an admin may apply an emergency rollback at once,
with a reason (still audited; pending promotions of that alias are superseded).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway import principals
from gateway.db.generation import as_utc, utcnow
from gateway.db.models import Alias, ApiKey, ArtifactVersion, AuditEntry, EvalRun, Promotion, Rollout
from gateway.errors import Conflict, InvalidRequest, NotFound, PermissionDenied
from gateway.keys import Principal, key_creators
from gateway.registry import audit
from gateway.registry.refs import validate_alias
from gateway.registry.rules import RULE_KINDS, loosening, served_spec
from gateway.registry.store import LATEST, set_alias
from gateway.settings import AliasRule, GovernanceConfig

PENDING, APPLIED, REJECTED = "pending", "applied", "rejected"


@dataclass(frozen=True)
class PromotionRecord:
    id: str
    kind: str
    name: str
    version: int
    alias: str
    action: str
    state: str
    from_version: int | None
    requested_by: str
    requested_at: datetime
    reason: str | None
    rule: dict[str, Any]
    approvals: list[dict[str, Any]]
    checks: list[dict[str, Any]]
    decided_by: str | None
    decided_at: datetime | None
    decision_reason: str | None
    applied_at: datetime | None

    @property
    def target(self) -> str:
        return f"{self.kind}:{self.name}@{self.alias}"

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        for key in ("requested_at", "decided_at", "applied_at"):
            out[key] = out[key].isoformat() if out[key] else None
        return out


def _record(row: Promotion) -> PromotionRecord:
    return PromotionRecord(
        row.id,
        row.kind,
        row.name,
        row.version,
        row.alias,
        row.action,
        row.state,
        row.from_version,
        row.requested_by,
        as_utc(row.requested_at),
        row.reason,
        dict(row.rule),
        list(row.approvals),
        list(row.checks),
        row.decided_by,
        as_utc(row.decided_at) if row.decided_at else None,
        row.decision_reason,
        as_utc(row.applied_at) if row.applied_at else None,
    )


def is_author(principal: Principal, git_author: str | None) -> bool:
    """A principal is the author when it is the commit author's email, its name, or the email's user,
    however either is spelled (gateway/principals.py)."""
    return principals.is_author(principal.principal, [git_author] if git_author else []) is not None


def governance_in_force(engine: Engine, configured: GovernanceConfig) -> GovernanceConfig:
    """The governance rules version at production; `configured` (config/gateway.yaml's) only until the
    registry serves one. Who may sync, request and approve follows the rules in force, never a file edit
    that nobody approved."""
    served = served_spec(engine, "governance")
    return GovernanceConfig.model_validate(served) if served is not None else configured


class PromotionService:
    def __init__(self, engine: Engine, governance: GovernanceConfig) -> None:
        """`governance` applies until the registry serves a governance version (then that one does)."""
        self.engine = engine
        self.governance = governance_in_force(engine, governance)

    # -- queries -------------------------------------------------------------------------------------

    def get(self, promotion_id: str) -> PromotionRecord:
        with Session(self.engine) as s:
            row = s.get(Promotion, promotion_id)
            if row is None:
                raise NotFound(f"no promotion {promotion_id!r} (see `opsgate promotions`)")
            return _record(row)

    def list_promotions(
        self, *, state: str | None = None, kind: str | None = None, name: str | None = None
    ) -> list[PromotionRecord]:
        with Session(self.engine) as s:
            q = select(Promotion).order_by(Promotion.requested_at.desc())
            if state:
                q = q.where(Promotion.state == state)
            if kind:
                q = q.where(Promotion.kind == kind)
            if name:
                q = q.where(Promotion.name == name)
            return [_record(r) for r in s.scalars(q)]

    # -- helpers -------------------------------------------------------------------------------------

    def rule_for(self, alias: str) -> AliasRule | None:
        return self.governance.protected_aliases.get(alias)

    def _require_role(self, principal: Principal, roles: list[str], what: str) -> None:
        if not principal.has_role(*roles):
            raise PermissionDenied(
                f"{what} needs the role {' or '.join(roles)}; key {principal.key_id} ({principal.principal}) has "
                f"{', '.join(sorted(principal.roles))}"
            )

    @staticmethod
    def _version(session: Session, kind: str, name: str, version: int) -> ArtifactVersion:
        row = session.scalars(
            select(ArtifactVersion).where(
                ArtifactVersion.kind == kind, ArtifactVersion.name == name, ArtifactVersion.version == version
            )
        ).first()
        if row is None:
            raise NotFound(f"{kind}:{name}@{version} does not exist (see `opsgate show {kind}:{name}`)")
        return row

    @staticmethod
    def _alias_version(session: Session, kind: str, name: str, alias: str) -> int | None:
        row = session.get(Alias, (kind, name, alias))
        return row.version if row is not None else None

    @staticmethod
    def _eval_check(
        session: Session, rule: AliasRule, kind: str, name: str, version: int
    ) -> dict[str, Any] | None:
        if rule.require_eval is None:
            return None
        suite = rule.require_eval.suite
        runs = session.scalars(
            select(EvalRun)
            .where(
                EvalRun.suite == suite,
                EvalRun.target_kind == kind,
                EvalRun.target_name == name,
                EvalRun.target_version == version,
                EvalRun.passed.is_(True),
            )
            .order_by(EvalRun.started_at.desc())
        ).all()
        # a run counts only as the chain recorded it (`eval.run`, gateway/evaluation/store.py): a row
        # inserted or flipped to passed in the database does not
        recorded = {
            e.after.get("run")
            for e in session.scalars(
                select(AuditEntry).where(
                    AuditEntry.action == "eval.run", AuditEntry.target == f"{kind}:{name}@{version}"
                )
            )
            if isinstance(e.after, dict) and e.after.get("passed") is True and e.after.get("suite") == suite
        }
        run = next((r for r in runs if r.id in recorded), None)
        if run is None and runs:
            raise Conflict(
                f"{kind}:{name}@{version} has passing runs of eval suite {suite!r} that the audit chain does not"
                f" record as passed ({', '.join(r.id for r in runs[:3])}: run before this release, or written"
                " outside the gateway); run"
                f" `opsgate eval run evals/{suite}.yaml --target {kind}:{name}@{version}` again",
                code="eval_required",
            )
        if run is None:
            raise Conflict(
                f"{kind}:{name}@{version} has no passing run of eval suite {suite!r}, which this alias requires;"
                f" run `opsgate eval run evals/{suite}.yaml --target {kind}:{name}@{version}` first",
                code="eval_required",
            )
        return {"check": "eval", "suite": suite, "run": run.id, "passed": True}

    # -- commands ------------------------------------------------------------------------------------

    def request(
        self,
        principal: Principal,
        *,
        kind: str,
        name: str,
        version: int,
        alias: str,
        reason: str | None = None,
        action: str = "promote",
    ) -> PromotionRecord:
        self._require_role(principal, self.governance.requester_roles, "requesting a promotion")
        validate_alias(alias)
        if alias == LATEST:
            raise InvalidRequest(
                "the alias 'latest' moves by itself when a version is registered", param="alias"
            )
        rule = self.rule_for(alias)

        def work(session: Session) -> PromotionRecord:
            target = self._version(session, kind, name, version)
            if rule is not None:
                _refuse_dirty(target, alias)
            current = self._alias_version(session, kind, name, alias)
            if current == version:
                raise Conflict(f"{kind}:{name}@{alias} already points at version {version}", code="no_change")
            pending = session.scalars(
                select(Promotion).where(Promotion.pending_key == f"{kind}:{name}@{alias}")
            ).first()
            if pending is not None:
                raise _already_pending(kind, name, alias, pending)
            effective, loosens = _rules_rule(session, rule, target, current)
            checks: list[dict[str, Any]] = []
            if effective is not None:
                eval_check = self._eval_check(session, effective, kind, name, version)
                if eval_check:
                    checks.append(eval_check)
            row = Promotion(
                id="prm_" + secrets.token_hex(6),
                kind=kind,
                name=name,
                version=version,
                alias=alias,
                action=action,
                state=PENDING,
                from_version=current,
                requested_by=principals.normalise(principal.principal) or principal.principal,
                requested_at=utcnow(),
                reason=reason,
                rule=(
                    {**effective.model_dump(), **({"loosens": loosens} if loosens else {})}
                    if effective
                    else {"protected": False}
                ),
                approvals=[],
                checks=checks,
                pending_key=f"{kind}:{name}@{alias}",
            )
            session.add(row)
            try:
                session.flush()
            except IntegrityError as exc:  # a racing request got there first
                raise _already_pending(kind, name, alias, None) from exc
            audit.append(
                session,
                actor=principal.actor,
                action=f"{action}.request",
                target=f"{kind}:{name}@{alias}",
                before={"version": current},
                after={
                    "version": version,
                    "promotion": row.id,
                    "rule": row.rule,
                    "requested_by": row.requested_by,
                },
                reason=reason,
            )
            if effective is None or effective.approvals == 0:
                self._apply(session, row, principal.actor)
            return _record(row)

        return audit.write_transaction(self.engine, work)

    def _load_pending(self, session: Session, promotion_id: str) -> Promotion:
        row = session.scalars(select(Promotion).where(Promotion.id == promotion_id).with_for_update()).first()
        if row is None:
            raise NotFound(f"no promotion {promotion_id!r} (see `opsgate promotions`)")
        if row.state != PENDING:
            raise Conflict(f"promotion {promotion_id} is {row.state}, not pending", code="not_pending")
        return row

    def approve(
        self, principal: Principal, promotion_id: str, *, comment: str | None = None
    ) -> PromotionRecord:
        def work(session: Session) -> PromotionRecord:
            row = self._load_pending(session, promotion_id)
            tampered = audit.promotion_problem(audit.promotion_entries(session, row), row)
            if tampered:
                raise Conflict(
                    f"{tampered}: the promotion was changed outside the audit chain and cannot be approved;"
                    " reject it and request again",
                    code="promotion_tampered",
                )
            rule = _stored_rule(row.rule, AliasRule(approvals=0))
            _require_live_key(session, principal)
            self._require_role(principal, rule.approver_roles, "approving a promotion")
            version = self._version(session, row.kind, row.name, row.version)
            if row.rule.get("protected", True):
                _refuse_dirty(version, row.alias)
            if rule.four_eyes:
                self._four_eyes(session, principal, row, version)
            if any(principals.same(a["by"], principal.principal) for a in row.approvals):
                raise Conflict(
                    f"{principal.principal} has already approved {row.id}", code="already_approved"
                )
            approvals = [
                *row.approvals,
                {
                    "by": principal.principal,
                    "key": principal.key_id,
                    "at": utcnow().isoformat(),
                    "comment": comment,
                },
            ]
            row.approvals = approvals
            audit.append(
                session,
                actor=principal.actor,
                action=f"{row.action}.approve",
                target=f"{row.kind}:{row.name}@{row.alias}",
                after={
                    "promotion": row.id,
                    "approvals": len(approvals),
                    "needed": rule.approvals,
                    "key": principal.key_id,
                },
                reason=comment,
            )
            if len(approvals) >= rule.approvals:
                checks = list(row.checks)
                eval_check = self._eval_check(session, rule, row.kind, row.name, row.version)
                if eval_check:
                    checks = [c for c in checks if c.get("check") != "eval"] + [eval_check]
                checks.append(
                    {"check": "approvals", "needed": rule.approvals, "got": len(approvals), "passed": True}
                )
                if rule.four_eyes:
                    checks.append({"check": "four_eyes", "passed": True})
                row.checks = checks
                self._apply(session, row, principal.actor)
            session.flush()
            return _record(row)

        return audit.write_transaction(self.engine, work)

    def _four_eyes(
        self, session: Session, principal: Principal, row: Promotion, version: ArtifactVersion
    ) -> None:
        """Neither the requester, nor anyone who committed to a file of the version since the previous
        version, nor a key the requester or one of those authors created (directly or through keys it
        created) may approve."""
        who = principal.principal
        if principals.same(who, row.requested_by):
            raise PermissionDenied(
                f"four-eyes: {who} requested promotion {row.id} and may not approve it", code="four_eyes"
            )
        authors = list(version.authors or []) or ([version.git_author] if version.git_author else [])
        author = principals.is_author(who, authors)
        if author is not None:
            raise PermissionDenied(
                f"four-eyes: {who} is the author of {row.kind}:{row.name}@{row.version} ({author} committed to"
                f" its files) and may not approve it",
                code="four_eyes",
            )
        for key_id, creator in key_creators(session, principal.key_id):
            if principals.same(creator, row.requested_by):
                raise PermissionDenied(
                    f"four-eyes: key {principal.key_id} ({who}) was created by {row.requested_by}'s key"
                    f" {key_id}, so its approval of {row.requested_by}'s request {row.id} does not count;"
                    " an approver whose key someone else created must approve",
                    code="four_eyes",
                )
            wrote = principals.is_author(creator, authors)
            if wrote is not None:
                raise PermissionDenied(
                    f"four-eyes: key {principal.key_id} ({who}) was created by key {key_id} of {creator}, an"
                    f" author of {row.kind}:{row.name}@{row.version} ({wrote}), so its approval does not count;"
                    " an approver whose key someone else created must approve",
                    code="four_eyes",
                )

    def _apply(self, session: Session, row: Promotion, actor: str) -> None:
        current = self._alias_version(session, row.kind, row.name, row.alias)
        if current != row.from_version:
            raise Conflict(
                f"{row.kind}:{row.name}@{row.alias} moved from {row.from_version} to {current} since promotion"
                f" {row.id} was requested; reject it and request again",
                code="alias_moved",
            )
        set_alias(
            session,
            kind=row.kind,
            name=row.name,
            alias=row.alias,
            version=row.version,
            actor=actor,
            action=f"alias.{row.action}",
            reason=row.reason,
        )
        now = utcnow()
        row.state = APPLIED
        row.applied_at = now
        row.decided_at = now
        row.decided_by = actor
        row.pending_key = None

    def reject(self, principal: Principal, promotion_id: str, *, reason: str) -> PromotionRecord:
        if not reason.strip():
            raise InvalidRequest("a rejection needs a reason", param="reason")

        def work(session: Session) -> PromotionRecord:
            row = self._load_pending(session, promotion_id)
            rule = _stored_rule(row.rule, AliasRule())
            _require_live_key(session, principal)
            self._require_role(principal, rule.approver_roles, "rejecting a promotion")
            row.state = REJECTED
            row.decided_by = principal.principal
            row.decided_at = utcnow()
            row.decision_reason = reason
            row.pending_key = None
            audit.append(
                session,
                actor=principal.actor,
                action=f"{row.action}.reject",
                target=f"{row.kind}:{row.name}@{row.alias}",
                after={"promotion": row.id},
                reason=reason,
            )
            session.flush()
            return _record(row)

        return audit.write_transaction(self.engine, work)

    def rollback(
        self,
        principal: Principal,
        *,
        kind: str,
        name: str,
        to_version: int,
        reason: str,
        alias: str = "production",
        emergency: bool = False,
    ) -> PromotionRecord:
        if not reason.strip():
            raise InvalidRequest("a rollback needs a reason", param="reason")
        if not emergency:
            return self.request(
                principal,
                kind=kind,
                name=name,
                version=to_version,
                alias=alias,
                reason=reason,
                action="rollback",
            )
        self._require_role(principal, ["admin"], "an emergency rollback")
        validate_alias(alias)

        def work(session: Session) -> PromotionRecord:
            self._version(session, kind, name, to_version)
            current = self._alias_version(session, kind, name, alias)
            if current == to_version:
                raise Conflict(
                    f"{kind}:{name}@{alias} already points at version {to_version}", code="no_change"
                )
            if kind in RULE_KINDS and current is not None:
                served = self._version(session, kind, name, current)
                wanted = self._version(session, kind, name, to_version)
                loosens = loosening(kind, dict(served.spec), dict(wanted.spec))
                if loosens:
                    raise Conflict(
                        f"rolling {kind}:{name}@{alias} back to version {to_version} loosens the rules"
                        f" ({'; '.join(loosens)}): that needs another admin's approval, so request a rollback"
                        " without --emergency",
                        code="loosens_rules",
                    )
            held = held_versions(session, kind, name, alias)
            if to_version not in held:
                before = ", ".join(str(v) for v in sorted(held)) or "none"
                raise Conflict(
                    f"an emergency rollback only moves {kind}:{name}@{alias} back to a version it held before"
                    f" (held: {before}); version {to_version} never was {alias}: request a promotion instead",
                    code="not_a_rollback",
                )
            for pending in session.scalars(
                select(Promotion).where(Promotion.pending_key == f"{kind}:{name}@{alias}").with_for_update()
            ):
                pending.state = REJECTED
                pending.decided_by = principal.principal
                pending.decided_at = utcnow()
                pending.decision_reason = "superseded by an emergency rollback"
                pending.pending_key = None
                session.flush()
            _stop_rollouts(session, f"{kind}:{name}@{alias}", principal.actor)
            now = utcnow()
            row = Promotion(
                id="prm_" + secrets.token_hex(6),
                kind=kind,
                name=name,
                version=to_version,
                alias=alias,
                action="rollback",
                state=APPLIED,
                from_version=current,
                requested_by=principal.principal,
                requested_at=now,
                reason=reason,
                rule={"emergency": True},
                approvals=[],
                checks=[{"check": "emergency", "by": principal.principal, "role": "admin", "passed": True}],
                decided_by=principal.principal,
                decided_at=now,
                applied_at=now,
                pending_key=None,
            )
            session.add(row)
            session.flush()
            set_alias(
                session,
                kind=kind,
                name=name,
                alias=alias,
                version=to_version,
                actor=principal.actor,
                action="alias.rollback.emergency",
                reason=reason,
            )
            return _record(row)

        return audit.write_transaction(self.engine, work)


def _stored_rule(stored: dict[str, Any], unprotected: AliasRule) -> AliasRule:
    if not stored.get("protected", True):
        return unprotected
    return AliasRule.model_validate({k: v for k, v in stored.items() if k != "loosens"})


def _rules_rule(
    session: Session, rule: AliasRule | None, target: ArtifactVersion, current: int | None
) -> tuple[AliasRule | None, list[str]]:
    """The rule a promotion of policy or governance rules follows: a change that loosens them needs an
    admin other than the requester (and the alias rule's other demands), whatever the alias rule says."""
    if target.kind not in RULE_KINDS or current is None:
        return rule, []
    served = PromotionService._version(session, target.kind, target.name, current)
    loosens = loosening(target.kind, dict(served.spec), dict(target.spec))
    if not loosens:
        return rule, []
    strict = AliasRule(
        approvals=max(1, rule.approvals if rule else 1),
        approver_roles=["admin"],
        four_eyes=True,
        require_eval=rule.require_eval if rule else None,
    )
    return strict, loosens


def _require_live_key(session: Session, principal: Principal) -> None:
    """An approval counts only from a key that is live in the database now: a gateway's key cache (or a
    replica's) may still hold a key revoked since (up to `cache.refresh_interval_s`)."""
    key = session.get(ApiKey, principal.key_id)
    if key is None or key.revoked_at is not None:
        raise PermissionDenied(
            f"key {principal.key_id} ({principal.principal}) was revoked: it can no longer approve or reject",
            code="key_revoked",
        )


def _stop_rollouts(session: Session, target: str, actor: str) -> None:
    """An emergency rollback ends a live rollout of the alias (gateway/rollouts/service.py): its candidate
    serves no more traffic, and its evaluator can no longer promote the candidate back over the rollback."""
    for live in session.scalars(select(Rollout).where(Rollout.live_key == target).with_for_update()):
        before = live.state
        live.state = "stopped"
        live.ended_at = utcnow()
        live.live_key = None
        session.flush()
        audit.append(
            session,
            actor=actor,
            action="rollout.stop",
            target=target,
            before={"state": before},
            after={"rollout": live.id, "state": "stopped"},
            reason="superseded by an emergency rollback",
        )


def held_versions(session: Session, kind: str, name: str, alias: str) -> set[int]:
    """Every version the alias pointed at, read from the audit chain (the alias's moves)."""
    target = f"{kind}:{name}@{alias}"
    held: set[int] = set()
    for entry in session.scalars(
        select(AuditEntry).where(AuditEntry.target == target, AuditEntry.action.like("alias.%"))
    ):
        for side in (entry.before, entry.after):
            if isinstance(side, dict) and isinstance(side.get("version"), int):
                held.add(side["version"])
    return held


def _refuse_dirty(version: ArtifactVersion, alias: str) -> None:
    if version.dirty:
        raise Conflict(
            f"{version.kind}:{version.name}@{version.version} is a dirty version (registered from uncommitted"
            f" changes, attributed to {version.git_author or 'nobody'}): it can never be promoted to the"
            f" protected alias {alias!r}; commit the files, `opsgate sync`, and promote the new version",
            code="dirty_version",
        )


def _already_pending(kind: str, name: str, alias: str, other: Promotion | None) -> Conflict:
    which = f" ({other.id}, to version {other.version})" if other else ""
    return Conflict(
        f"a promotion of {kind}:{name}@{alias} is already pending{which}; approve or reject it first",
        code="promotion_pending",
    )
