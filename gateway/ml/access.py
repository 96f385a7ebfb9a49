"""Which model versions a key may be served (issue 11, item 6): the request flow's rule, for models.

A version reaches application traffic only while it is approved, i.e. while a protected alias
(`governance.protected_aliases`: `production`, `staging`, ...) points at it; an application key may name
such a version any way it likes (bare, by alias, by number). Any other version (`latest`, an unprotected
alias such as `canary` or `beta`, a number no protected alias holds) needs a role that works on candidates
(prompt-engineer, approver, admin) or an explicit grant on the key: an allow pattern with a selector,
such as `model:churn@*` or `model:churn@latest`.

This is the rule of gateway/flow/access.py (prompts, routers, indexes) with the same error code; when the
two branches meet, `check` can delegate to `VersionAccess.check` there.
"""

from __future__ import annotations

import fnmatch

from gateway.errors import PermissionDenied
from gateway.keys import Principal
from gateway.registry.store import VersionRecord

CANDIDATE_ROLES = ("prompt-engineer", "approver", "admin")


def may_serve(principal: Principal, record: VersionRecord, selector: str | None, *, approved: bool) -> bool:
    if approved or principal.has_role(*CANDIDATE_ROLES):
        return True
    return granted(principal, record.kind, record.name, selector or str(record.version))


def check(principal: Principal, record: VersionRecord, selector: str | None, *, approved: bool) -> None:
    """403 unless the key may call the model and be served this version, asked for with `selector`."""
    kind, name = record.kind, record.name
    if not principal.may_call(kind, name):
        raise PermissionDenied(
            f"this key may not call {kind}:{name} (its allow list does not include it)", param="model"
        )
    if may_serve(principal, record, selector, approved=approved):
        return
    asked = f"{kind}:{name}@{selector}" if selector else f"{kind}:{name}"
    raise PermissionDenied(
        f"{asked} is version {record.version}, which no protected alias points at: it is not approved for"
        f" application traffic. Ask for {kind}:{name} (its production version), promote version"
        f" {record.version}, or use a key with the prompt-engineer role or a grant such as"
        f" --allow '{kind}:{name}@*'",
        param="model",
        code="version_not_approved",
    )


def granted(principal: Principal, kind: str, name: str, selector: str) -> bool:
    """An allow pattern with a selector (`kind:name@sel`, globs allowed) that covers this one."""
    target = f"{kind}:{name}@{selector}"
    return any(
        "@" in p and (fnmatch.fnmatchcase(target, p) or fnmatch.fnmatchcase(f"{name}@{selector}", p))
        for p in principal.allow
    )
