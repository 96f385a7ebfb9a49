"""Admin REST API under /admin: artifacts, versions, promotions, rollback, audit, keys.

Every endpoint needs a key; reads need a governance role (prompt-engineer, approver or admin), writes
the role their action needs (checked by the same service layer the CLI uses, so no key or role can move
a protected alias around a promotion).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, cast

from fastapi import APIRouter, Depends, Query, Request
from pydantic import ConfigDict, Field
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from gateway import kinds
from gateway.api.deps import call_for, gateway_of
from gateway.api.openapi_spec import (
    ADMIN_ERRORS,
    KIND_REF,
    VERSION_REF,
    body_properties,
    error_responses,
)
from gateway.api_requests import StrictBody
from gateway.db.generation import as_utc
from gateway.db.models import AuditEntry
from gateway.errors import InvalidRequest, PermissionDenied
from gateway.keys import KeyService, Principal
from gateway.registry import audit
from gateway.registry.blobs import BlobStore, blob_root
from gateway.registry.promotion import PromotionService, governance_in_force
from gateway.registry.refs import RULE_KINDS, parse_ref, validate_alias
from gateway.registry.store import VersionStore
from gateway.registry.sync import sync
from gateway.registry.views import artifact_detail, artifact_list, diff, resolve_record, version_dict

MAX_INT = 2**31 - 1  # integer columns (versions, sequence numbers) are 32-bit in every database


def bad_value(value: Any, where: str) -> InvalidRequest | None:
    """(Also the dashboard's check of its query, path and form values.) A NUL character (PostgreSQL refuses it in text) or an integer no column holds, anywhere in a value."""
    if isinstance(value, str):
        if "\x00" in value:
            return InvalidRequest(f"{where}: NUL characters are not allowed", param=where)
        if value.lstrip("-").isdigit() and len(value) > 10 and abs(int(value)) > MAX_INT:
            return InvalidRequest(f"{where}: {value} is out of range (at most {MAX_INT})", param=where)
    elif isinstance(value, bool):
        return None
    elif isinstance(value, int | float):
        if abs(value) > MAX_INT:
            return InvalidRequest(f"{where}: {value} is out of range (at most {MAX_INT})", param=where)
    elif isinstance(value, dict):
        for k, v in value.items():
            problem = bad_value(k, f"{where}.{k}" if where else str(k)) or bad_value(
                v, f"{where}.{k}" if where else str(k)
            )
            if problem:
                return problem
    elif isinstance(value, list):
        for i, v in enumerate(value):
            problem = bad_value(v, f"{where}.{i}" if where else str(i))
            if problem:
                return problem
    return None


async def clean_inputs(request: Request) -> None:
    """Before anything reaches the database: NUL characters and out-of-range integers in the path, the
    query or the JSON body get a 400 naming the field, never a 500."""
    for name, value in request.path_params.items():
        if problem := bad_value(str(value), name):
            raise problem
    for name, value in request.query_params.multi_items():
        if problem := bad_value(value, name):
            raise problem
    if request.method in ("POST", "PUT", "PATCH", "DELETE"):
        raw = await request.body()
        if raw:
            try:  # the stdlib parser keeps big integers exact (orjson turns them into floats)
                data = json.loads(raw)
            except ValueError:
                return  # not JSON: reported by the body's own validation
            if problem := bad_value(data, ""):
                raise problem


router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    responses=error_responses(*ADMIN_ERRORS),
    dependencies=[Depends(clean_inputs)],
)

READ_ROLES = ("prompt-engineer", "approver", "admin")


def _principal(request: Request) -> Principal:
    """The caller's key, checked exactly as the OpenAI endpoints check it (401 when missing or unknown)."""
    return gateway_of(request).authenticate(call_for(request, "/admin"), request.headers.get("authorization"))


def require_reader(principal: Principal, what: str = "the admin API") -> Principal:
    """The role check of every admin read (and of the dashboard's pages)."""
    if not principal.has_role(*READ_ROLES):
        raise PermissionDenied(f"{what} needs one of the roles {', '.join(READ_ROLES)}")
    return principal


def reader(principal: Annotated[Principal, Depends(_principal)]) -> Principal:
    return require_reader(principal)


Reader = Annotated[Principal, Depends(reader)]
Caller = Annotated[Principal, Depends(_principal)]


def _engine(request: Request) -> Engine:
    return cast(Engine, request.app.state.parts.engine)


def promotions_of(request: Request) -> PromotionService:
    parts = request.app.state.parts
    return PromotionService(parts.engine, parts.config.governance)


class _Body(StrictBody):  # `{"emergency": "yes"}` was coerced to true (found by the fuzz pass)
    model_config = ConfigDict(extra="forbid")


class PromotionRequest(_Body):
    ref: str = Field(description="kind:name@version, e.g. prompt:support_qa@7")
    to: str = Field(description="The alias to move, e.g. production")
    reason: str | None = None


class Decision(_Body):
    comment: str | None = None


class Rejection(_Body):
    reason: str = Field(min_length=1)


class RollbackRequest(_Body):
    ref: str = Field(description="kind:name")
    to_version: int = Field(ge=1)
    reason: str = Field(min_length=1)
    alias: str = "production"
    emergency: bool = False


class SyncRequest(_Body):
    allow_dirty: bool = False


class KeyRequest(_Body):
    name: str = Field(min_length=1)
    roles: list[str] = Field(min_length=1)
    principal: str | None = None
    allow: list[str] = Field(default_factory=lambda: ["*"])


# -- artifacts ------------------------------------------------------------------------------------------


@router.get("/artifacts", summary="List artifacts with their aliases")
def list_artifacts(
    request: Request, _: Reader, kind: Annotated[str | None, Query()] = None
) -> list[dict[str, Any]]:
    known = (*kinds.names(), *RULE_KINDS)
    if kind is not None and kind not in known:  # a typo lists nothing silently otherwise
        raise InvalidRequest(f"unknown artifact kind {kind!r}; kinds are: {', '.join(known)}", param="kind")
    return artifact_list(_engine(request), kind)


@router.get("/artifacts/{kind}/{name}", summary="One artifact: its versions and aliases")
def show_artifact(request: Request, _: Reader, kind: str, name: str) -> dict[str, Any]:
    parse_ref(f"{kind}:{name}")
    return artifact_detail(_engine(request), kind, name)


@router.get("/artifacts/{kind}/{name}/versions/{selector}", summary="One version (number or alias)")
def show_version(request: Request, _: Reader, kind: str, name: str, selector: str) -> dict[str, Any]:
    store = VersionStore(_engine(request))
    record = resolve_record(store, parse_ref(f"{kind}:{name}@{selector}"))
    return version_dict(record, store.aliases(kind, name).get((kind, name), {}))


@router.get("/diff", summary="Unified diff of two versions' specs")
def diff_versions(request: Request, _: Reader, a: str, b: str) -> dict[str, str]:
    store = VersionStore(_engine(request))
    ra, rb = resolve_record(store, parse_ref(a)), resolve_record(store, parse_ref(b))
    return {"a": ra.ref, "b": rb.ref, "diff": diff(ra, rb)}


@router.post("/sync", summary="Register what the gateway's project repository holds at HEAD")
def sync_repo(request: Request, caller: Caller, body: SyncRequest) -> dict[str, Any]:
    parts = request.app.state.parts
    roles = governance_in_force(parts.engine, parts.config.governance).registrar_roles
    if not caller.has_role(*roles):
        raise PermissionDenied(f"sync needs one of the roles {', '.join(roles)}")
    blobs = BlobStore(blob_root(parts.settings.resolved_data_dir()))
    report = sync(
        parts.engine,
        parts.settings.project_dir,
        actor=caller.actor,
        allow_dirty=body.allow_dirty,
        blobs=blobs,
    )
    return {
        "commit": report.commit,
        "registered": [r.ref for r in report.registered],
        "rules": [r.ref for r in report.rules],
        "unchanged": [r.ref for r in report.unchanged],
        "errors": [e.message for e in report.errors],
        "dirty_files": report.dirty_files,
    }


# -- promotions -----------------------------------------------------------------------------------------


@router.get("/promotions", summary="List promotions")
def list_promotions(
    request: Request, _: Reader, state: Literal["pending", "applied", "rejected"] | None = None
) -> list[dict[str, Any]]:
    return [p.as_dict() for p in promotions_of(request).list_promotions(state=state)]


@router.get("/promotions/{promotion_id}", summary="One promotion")
def get_promotion(request: Request, _: Reader, promotion_id: str) -> dict[str, Any]:
    return promotions_of(request).get(promotion_id).as_dict()


@router.post(
    "/promotions",
    status_code=201,
    summary="Request a promotion (applies at once if the alias is not protected)",
    openapi_extra=body_properties(ref=VERSION_REF),
)
def request_promotion(request: Request, caller: Caller, body: PromotionRequest) -> dict[str, Any]:
    ref = parse_ref(body.ref, param="ref")
    if ref.kind is None or ref.version is None:
        raise_ref(body.ref)
    assert ref.kind is not None and ref.version is not None
    validate_alias(body.to, param="to")
    record = promotions_of(request).request(
        caller, kind=ref.kind, name=ref.name, version=ref.version, alias=body.to, reason=body.reason
    )
    return record.as_dict()


@router.post(
    "/promotions/{promotion_id}/approve", summary="Approve; the approval that completes the rule applies it"
)
def approve(
    request: Request, caller: Caller, promotion_id: str, body: Decision | None = None
) -> dict[str, Any]:
    return (
        promotions_of(request).approve(caller, promotion_id, comment=body.comment if body else None).as_dict()
    )


@router.post("/promotions/{promotion_id}/reject", summary="Reject with a reason")
def reject(request: Request, caller: Caller, promotion_id: str, body: Rejection) -> dict[str, Any]:
    return promotions_of(request).reject(caller, promotion_id, reason=body.reason).as_dict()


@router.post(
    "/rollback",
    status_code=201,
    summary="Roll an alias back (a promotion; admins may do it at once)",
    openapi_extra=body_properties(ref=KIND_REF),
)
def rollback(request: Request, caller: Caller, body: RollbackRequest) -> dict[str, Any]:
    ref = parse_ref(body.ref, param="ref")
    if ref.kind is None:
        raise_ref(body.ref)
    assert ref.kind is not None
    record = promotions_of(request).rollback(
        caller,
        kind=ref.kind,
        name=ref.name,
        to_version=body.to_version,
        reason=body.reason,
        alias=body.alias,
        emergency=body.emergency,
    )
    return record.as_dict()


def raise_ref(text: str) -> None:
    from gateway.errors import InvalidFields

    raise InvalidFields(
        f"ref: {text!r} must be kind:name@version (kinds: {', '.join(kinds.names())})", param="ref"
    )


# -- audit ----------------------------------------------------------------------------------------------


@router.get("/audit", summary="Audit entries, newest last")
def audit_entries(
    request: Request,
    _: Reader,
    after: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    with Session(_engine(request)) as s:
        rows = s.scalars(
            select(AuditEntry).where(AuditEntry.seq > after).order_by(AuditEntry.seq).limit(limit)
        )
        return [audit_dict(r) for r in rows]


def audit_dict(r: AuditEntry) -> dict[str, Any]:
    return {
        "seq": r.seq,
        "ts": as_utc(r.ts).isoformat(),
        "actor": r.actor,
        "action": r.action,
        "target": r.target,
        "before": r.before,
        "after": r.after,
        "reason": r.reason,
        "prev_hash": r.prev_hash,
        "hash": r.entry_hash,
    }


@router.get("/audit/verify", summary="Verify the audit hash chain")
def audit_verify(request: Request, _: Reader) -> dict[str, Any]:
    result = audit.verify(_engine(request))
    return {"ok": result.ok, "entries": result.entries, "problem": result.problem, "seq": result.seq}


# -- online evaluation --------------------------------------------------------------------------------


@router.get("/online-eval", summary="Rolling means of online eval scores per prompt version and metric")
def online_eval_means(request: Request, _: Reader, prompt: str | None = None) -> list[dict[str, Any]]:
    from gateway.evaluation.online import rolling_means_from_db

    return rolling_means_from_db(_engine(request), prompt=prompt)


# -- keys -----------------------------------------------------------------------------------------------


def _admin(principal: Principal) -> None:
    if not principal.has_role("admin"):
        raise PermissionDenied("managing keys needs the admin role")


@router.get("/keys", summary="List keys (never their values)")
def list_keys(request: Request, caller: Caller) -> list[dict[str, Any]]:
    _admin(caller)
    return [
        {
            "id": k.id,
            "prefix": k.prefix,
            "name": k.name,
            "principal": k.principal,
            "roles": k.roles,
            "allow": k.allow,
            "created_at": k.created_at.isoformat(),
            "revoked": k.revoked_at is not None,
        }
        for k in KeyService(_engine(request)).list(include_revoked=True)
    ]


@router.post("/keys", status_code=201, summary="Create a key; the value is shown once")
def create_key(request: Request, caller: Caller, body: KeyRequest) -> dict[str, Any]:
    _admin(caller)
    record, value = KeyService(_engine(request)).create(
        name=body.name,
        roles=body.roles,
        principal=body.principal,
        allow=body.allow,
        actor=caller.actor,
        created_by_key=caller.key_id,
    )
    return {"id": record.id, "key": value, "principal": record.principal, "roles": record.roles}


@router.delete("/keys/{key_id}", summary="Revoke a key")
def revoke_key(request: Request, caller: Caller, key_id: str) -> dict[str, Any]:
    _admin(caller)
    record = KeyService(_engine(request)).revoke(key_id, actor=caller.actor)
    return {"id": record.id, "revoked": True}
