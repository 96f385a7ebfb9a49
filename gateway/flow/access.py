"""Which versions a key may be served: governance applied to the request path.

A version reaches application traffic only while it is approved: while a protected alias (one of
`governance.protected_aliases`: `production`, `staging`, ...) points at it. An application key may name
such a version any way it likes (bare, by alias, by number); any other version (`latest`, an unprotected
alias, a number no protected alias holds) needs a role that works on candidates (prompt-engineer,
approver, admin) or an explicit grant on the key: an allow pattern with a selector, such as
`prompt:docs_qa@*` or `prompt:docs_qa@7`.

What an approved artifact names itself (a prompt's `router: default@3`, its `retrieval.index`) was
reviewed with it: a version number there is pinned by that approval. A moving selector there (`latest`,
an unprotected alias) could bring in a version nobody approved, so it is held to the caller's rule.

Which aliases are protected is the governance rules version in force (`governance:governance@production`,
gateway/registry/rules.py), the same rules the promotion service applies, followed live with the snapshot;
`config/gateway.yaml`'s own `governance:` section counts only until such a version exists. An alias the
file protects but the rules in force do not moves without approval, so it approves nothing.
"""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING

from gateway.errors import PermissionDenied
from gateway.keys import Principal
from gateway.registry.rules import RULE_KINDS, SERVED_ALIAS
from gateway.registry.store import VersionRecord
from gateway.snapshot import Catalog, Snapshot

if TYPE_CHECKING:
    from gateway.flow.plan import Asked

CANDIDATE_ROLES = ("prompt-engineer", "approver", "admin")


class VersionAccess:
    def __init__(self, catalog: Catalog, protected_aliases: frozenset[str]) -> None:
        self.catalog = catalog
        self.configured = protected_aliases  # config/gateway.yaml's, until a rules version is served
        self._seen: Snapshot | None = None
        self._protected = protected_aliases
        self._approved: frozenset[tuple[str, str, int]] = frozenset()

    @property
    def protected(self) -> frozenset[str]:
        """The protected aliases of the governance rules in force now."""
        self._refresh()
        return self._protected

    def approved(self, record: VersionRecord) -> bool:
        """Whether a protected alias points at this version now (one set lookup per snapshot)."""
        self._refresh()
        return (record.kind, record.name, record.version) in self._approved

    def _refresh(self) -> None:
        snapshot = self.catalog.snapshot
        if snapshot is self._seen:
            return
        protected = served_protected_aliases(snapshot)
        self._protected = protected = self.configured if protected is None else protected
        self._approved = frozenset(
            (kind, name, version)
            for (kind, name), aliases in snapshot.aliases.items()
            for alias, version in aliases.items()
            if alias in protected
        ) | _rollout_arms(snapshot, protected)
        self._seen = snapshot

    def authorise(self, principal: Principal | None, asked: list[Asked]) -> None:
        """403 unless the key may be served every version a request resolved: its allow list covers
        what the caller named, and each version is approved (or the key may see candidates)."""
        assert principal is not None, "authenticate before authorising"
        for item in asked:
            record = item.record
            if item.listed and not principal.may_call(record.kind, record.name):
                raise PermissionDenied(
                    f"this key may not call {record.kind}:{record.name} (its allow list does not include it)",
                    param="model",
                )
            self.check(principal, record, item.selector, pinned=item.pinned)

    def check(
        self, principal: Principal, record: VersionRecord, selector: str | None, *, pinned: bool = False
    ) -> None:
        """403 unless `principal` may be served `record`, which it (or, when `pinned`, an approved
        artifact that names it by number) asked for with `selector`."""
        if self.approved(record) or (pinned and selector is not None and selector.isdigit()):
            return
        if principal.has_role(*CANDIDATE_ROLES):
            return
        kind, name = record.kind, record.name
        if granted(principal, kind, name, selector or str(record.version)):
            return
        asked = f"{kind}:{name}@{selector}" if selector else f"{kind}:{name}"
        where = " (named by the prompt being served)" if pinned else ""
        protected = ", ".join(sorted(self.protected)) or "none"
        raise PermissionDenied(
            f"{asked}{where} is version {record.version}, which no protected alias ({protected}) points at:"
            f" it is not approved for application traffic. Ask for {kind}:{name} (its production version),"
            f" promote version {record.version}, or use a key with the prompt-engineer role or a grant such"
            f" as --allow '{kind}:{name}@*'",
            param="model",
            code="version_not_approved",
        )


def served_protected_aliases(snapshot: Snapshot) -> frozenset[str] | None:
    """The protected aliases of the governance rules version at production in `snapshot` (None when
    there is none yet: the configured ones apply)."""
    rule = RULE_KINDS["governance"]
    version = snapshot.aliases.get((rule.kind, rule.name), {}).get(SERVED_ALIAS)
    record = snapshot.records.get((rule.kind, rule.name, version)) if version is not None else None
    aliases = record.spec.get("protected_aliases") if record is not None else None
    return frozenset(aliases) if isinstance(aliases, dict) else None


def _rollout_arms(snapshot: Snapshot, protected: frozenset[str]) -> frozenset[tuple[str, str, int]]:
    """Both arms of a live rollout on a protected alias: the control was approved there before, the
    candidate only once the promotion that let the rollout start was applied (gateway/rollouts/service.py).
    A rollout that started while its alias was unprotected (no promotion) approves only its control."""
    return frozenset(
        (kind, name, version)
        for (kind, name, alias), live in snapshot.rollouts.items()
        if alias in protected
        for version in ((live.control, live.candidate) if live.active and live.approved else (live.control,))
    )


def granted(principal: Principal, kind: str, name: str, selector: str) -> bool:
    """An allow pattern with a selector (`kind:name@sel`, globs allowed) that covers this one."""
    target = f"{kind}:{name}@{selector}"
    return any(
        "@" in p and (fnmatch.fnmatchcase(target, p) or fnmatch.fnmatchcase(f"{name}@{selector}", p))
        for p in principal.allow
    )
