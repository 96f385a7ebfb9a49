"""Governance rules are artifacts: the policy rules (config/policies.yaml) and the approval rules (the
`governance:` section of config/gateway.yaml) are versioned, audited and promoted like prompts.

    kind         name        file
    policy       policies    config/policies.yaml
    governance   governance  config/gateway.yaml (its `governance:` section)
    alert        alerts      config/alerts.yaml (alert rules: gateway/monitoring/alerting.py)

`opsgate sync` registers a new version when the committed file changes; the gateway serves the version at
`production` (the alias moves only through a promotion, and a running gateway picks the move up with the
rest of the registry, without a restart). A change that LOOSENS the rules (`loosening`) needs an approval
by an admin other than the requester, whatever the alias rule says; tightening follows the alias rule.
The first version of each is registered once, from committed files, by the first-start bootstrap
(`bootstrap_rules`), which also runs once on an install upgraded from before rules were artifacts.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from gateway.db.generation import lock_key, set_counter
from gateway.db.models import Alias, ArtifactVersion, GatewayState
from gateway.errors import ConfigError
from gateway.registry import audit
from gateway.registry.git import GitRepo
from gateway.registry.hashing import content_hash
from gateway.registry.store import SourceInfo, VersionRecord, previous_commit, register_version, set_alias
from gateway.registry.tree import GitTree, Tree
from gateway.yamlspec import load_spec_text

SERVED_ALIAS = "production"
RULES_BOOTSTRAPPED = "rules_bootstrapped"
RULES_LOCK = "rules_bootstrap_lock"


@dataclass(frozen=True)
class RuleKind:
    kind: str
    name: str
    path: str
    section: str | None  # the file's top-level key that holds the rules (None: the whole file)
    model: str  # "module:callable" returning the pydantic model (imported when a file is read)


RULE_KINDS: dict[str, RuleKind] = {
    "policy": RuleKind(
        "policy", "policies", "config/policies.yaml", None, "gateway.policy.spec:policy_model"
    ),
    "governance": RuleKind(
        "governance", "governance", "config/gateway.yaml", "governance", "gateway.settings:governance_model"
    ),
    "alert": RuleKind(
        "alert", "alerts", "config/alerts.yaml", None, "gateway.monitoring.alertrules:alerts_model"
    ),
}


def _model(rule: RuleKind) -> type[BaseModel]:
    module, _, attr = rule.model.partition(":")
    factory: Callable[[], type[BaseModel]] = getattr(importlib.import_module(module), attr)
    return factory()


@dataclass(frozen=True)
class RuleFile:
    rule: RuleKind
    spec: dict[str, Any]  # every field, defaults included (what `loosening` compares)
    content_hash: str


def parse_rules(rule: RuleKind, text: str | None, context: dict[str, Any] | None = None) -> RuleFile:
    """The rules of one file's text (None: the file does not exist, which means every default). `context`
    holds the operator's egress rules when a file is synced (alert receivers' hosts and variables)."""
    model = _model(rule)
    data: Any = {}
    if text is not None:
        try:
            loaded = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"not valid YAML: {exc}", path=rule.path) from exc
        if not isinstance(loaded, dict):
            raise ConfigError("the file must hold a mapping", path=rule.path)
        data = loaded.get(rule.section) or {} if rule.section else loaded
    if rule.section is None and text is not None:
        spec = load_spec_text(text, model, rule.path, context=context)
    else:
        spec = load_spec_text(yaml.safe_dump(data), model, rule.path, context=context)
    return RuleFile(rule, spec.model_dump(mode="json"), content_hash(spec))


def read_rules(tree: Tree, context: dict[str, Any] | None = None) -> tuple[list[RuleFile], list[ConfigError]]:
    files: list[RuleFile] = []
    errors: list[ConfigError] = []
    for rule in RULE_KINDS.values():
        try:
            present = rule.path in tree.files(rule.path.rsplit("/", 1)[0])
            text = tree.read(rule.path).decode("utf-8") if present else None
            files.append(parse_rules(rule, text, context))
        except ConfigError as exc:
            errors.append(exc)
        except UnicodeDecodeError:
            errors.append(ConfigError("the file is not valid UTF-8", path=rule.path))
    return files, errors


def source_of(
    repo: GitRepo, engine: Engine | None, rule: RuleKind, head: str, *, dirty: bool = False
) -> SourceInfo:
    commit = repo.last_commit(rule.path)
    if dirty:
        return SourceInfo(
            path=rule.path, commit=head, author=repo.user(), message="uncommitted changes", dirty=True
        )
    since = previous_commit(engine, rule.kind, rule.name) if engine is not None else None
    authors = tuple(repo.authors([rule.path], since=since, until=head))
    if commit is None:  # the file does not exist: the defaults, as of this commit
        return SourceInfo(path=rule.path, commit=head, author=None, message="(no file: defaults)")
    return SourceInfo(
        path=rule.path, commit=commit.sha, author=commit.author, message=commit.message, authors=authors
    )


def register_rules(
    engine: Engine,
    repo: GitRepo,
    head: str,
    files: list[RuleFile],
    *,
    actor: str,
    dirty_files: set[str] | frozenset[str] = frozenset(),
) -> list[tuple[VersionRecord, bool]]:
    """Register the rules read by a sync (no-op when unchanged); aliases do not move."""
    out = []
    for item in files:
        source = source_of(repo, engine, item.rule, head, dirty=item.rule.path in dirty_files)

        def work(
            session: Session, item: RuleFile = item, source: SourceInfo = source
        ) -> tuple[VersionRecord, bool]:
            return register_version(
                session,
                kind=item.rule.kind,
                name=item.rule.name,
                spec=item.spec,
                content_hash=item.content_hash,
                source=source,
                actor=actor,
            )

        out.append(audit.write_transaction(engine, work))
    return out


def bootstrap_rules(engine: Engine, project_dir: Path, *, actor: str) -> list[VersionRecord] | None:
    """Once per install: register the committed rule files as the first policy and governance versions and
    point `production` at them (audited `rules.bootstrap`). Only committed content: a project that is not a
    git repository (or has no commit) gets none, and the gateway keeps its start-up files until a sync.
    None when it already ran."""
    with Session(engine) as s:
        if s.get(GatewayState, RULES_BOOTSTRAPPED) is not None:
            return None
    repo = GitRepo(project_dir)
    if not (repo.is_repo() and repo.has_commit()):
        return None
    head = repo.head()
    from gateway.registry.files import file_context

    try:
        context: dict[str, Any] | None = file_context(project_dir)
    except ConfigError:  # config/gateway.yaml itself is invalid: start-up reports it
        context = None
    files, errors = read_rules(GitTree(repo, head, ("config",)), context)
    sources = {f.rule.kind: source_of(repo, None, f.rule, head) for f in files}

    def work(session: Session) -> list[VersionRecord] | None:
        lock_key(session, RULES_LOCK)
        if session.get(GatewayState, RULES_BOOTSTRAPPED) is not None:
            return None
        records = []
        for item in files:
            record, _ = register_version(
                session,
                kind=item.rule.kind,
                name=item.rule.name,
                spec=item.spec,
                content_hash=item.content_hash,
                source=sources[item.rule.kind],
                actor=actor,
            )
            records.append(record)
            if session.get(Alias, (item.rule.kind, item.rule.name, SERVED_ALIAS)) is None:
                set_alias(
                    session,
                    kind=item.rule.kind,
                    name=item.rule.name,
                    alias=SERVED_ALIAS,
                    version=record.version,
                    actor=actor,
                    action="alias.bootstrap",
                    reason="the first version of the governance rules, from committed files",
                )
        audit.append(
            session,
            actor=actor,
            action="rules.bootstrap",
            target="registry",
            after={
                "commit": head,
                "production": [r.ref for r in records],
                "errors": [e.message for e in errors],
            },
            reason="policy and governance rules are artifacts from now on; they change by promotion",
        )
        set_counter(session, RULES_BOOTSTRAPPED, 1)
        return records

    return audit.write_transaction(engine, work)


def served_spec(engine: Engine, kind: str) -> dict[str, Any] | None:
    """The spec of the rules version at `production` (None when there is none yet)."""
    rule = RULE_KINDS[kind]
    with Session(engine) as s:
        alias = s.get(Alias, (rule.kind, rule.name, SERVED_ALIAS))
        if alias is None:
            return None
        row = s.scalars(
            select(ArtifactVersion).where(
                ArtifactVersion.kind == rule.kind,
                ArtifactVersion.name == rule.name,
                ArtifactVersion.version == alias.version,
            )
        ).first()
        return dict(row.spec) if row is not None else None


def served_ref(engine: Engine, kind: str) -> str:
    rule = RULE_KINDS[kind]
    with Session(engine) as s:
        alias = s.get(Alias, (rule.kind, rule.name, SERVED_ALIAS))
    return f"{rule.kind}:{rule.name}@{alias.version}" if alias else "(none)"


# -- loosening ----------------------------------------------------------------------------------------

MODE_STRENGTH = {"off": 0, "log": 1, "flag": 2, "warn": 2, "redact": 3, "block": 4}


def loosening(kind: str, old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """How `new` loosens `old` (empty when it does not): one line per loosened rule. Anything not known to
    be stricter counts as loosening (a changed match, a new value of an unknown field)."""
    if old is None:
        return []
    if kind == "governance":
        return _governance_loosening(old, new)
    if kind == "policy":
        return _policy_loosening(old, new)
    if kind == "alert":
        return _alert_loosening(old, new)
    return []


def _alert_loosening(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Alert rules loosen when they would tell fewer people, later, or about less: a rule or receiver
    removed, a receiver's address changed, a threshold moved away from the breach, a longer `for`."""
    out: list[str] = []
    for name, receiver in (old.get("receivers") or {}).items():
        if (new.get("receivers") or {}).get(name, {}).get("url") != receiver.get("url"):
            out.append(f"receiver {name!r} removed or its url changed")
    new_rules = {r["name"]: r for r in new.get("rules") or []}
    for rule in old.get("rules") or []:
        other = new_rules.get(rule["name"])
        if other is None:
            out.append(f"rule {rule['name']!r} removed")
            continue
        for key in sorted(set(rule) | set(other)):
            before, after = rule.get(key), other.get(key)
            if before == after or _stricter_alert(key, rule, before, after):
                continue
            out.append(f"rule {rule['name']!r}: {key} {before!r} -> {after!r}")
    return out


def _stricter_alert(key: str, rule: dict[str, Any], before: Any, after: Any) -> bool:
    if key == "threshold" and isinstance(before, int | float) and isinstance(after, int | float):
        return bool(after < before) if str(rule.get("op", ">")).startswith(">") else bool(after > before)
    if key in ("for_", "for", "min_samples"):
        return isinstance(after, int | float) and isinstance(before, int | float) and after < before
    if key == "receivers":
        return set(before or []) <= set(after or [])
    if key == "severity":
        order = ["info", "warning", "critical"]
        return before in order and after in order and order.index(after) > order.index(before)
    return key == "description"


def _governance_loosening(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out: list[str] = []
    old_aliases = old.get("protected_aliases") or {}
    new_aliases = new.get("protected_aliases") or {}
    for alias, rule in old_aliases.items():
        if alias not in new_aliases:
            out.append(f"alias {alias!r} is no longer protected")
            continue
        other = new_aliases[alias]
        if int(other.get("approvals", 1)) < int(rule.get("approvals", 1)):
            out.append(f"{alias}: approvals {rule.get('approvals')} -> {other.get('approvals')}")
        if set(other.get("approver_roles") or []) - set(rule.get("approver_roles") or []):
            out.append(f"{alias}: more roles may approve ({', '.join(other.get('approver_roles') or [])})")
        if rule.get("four_eyes", True) and not other.get("four_eyes", True):
            out.append(f"{alias}: four-eyes turned off")
        if rule.get("require_eval") and other.get("require_eval") != rule.get("require_eval"):
            out.append(f"{alias}: the required eval changed or was removed")
    for field in ("requester_roles", "registrar_roles"):
        added = set(new.get(field) or []) - set(old.get(field) or [])
        if added:
            out.append(f"{field}: {', '.join(sorted(added))} added")
    return out


def _policy_loosening(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key, value in old.items():
        if key != "rules" and new.get(key) != value and not _stricter_scalar(key, value, new.get(key)):
            out.append(f"{key}: {value!r} -> {new.get(key)!r}")
    new_rules = {r.get("name") or str(i): r for i, r in enumerate(new.get("rules") or [])}
    for i, rule in enumerate(old.get("rules") or []):
        name = rule.get("name") or str(i)
        other = new_rules.get(name)
        if other is None:
            out.append(f"rule {name!r} removed")
            continue
        if other.get("match") != rule.get("match"):
            out.append(f"rule {name!r}: its match changed")
        new_checks = list(other.get("checks") or [])
        for check in rule.get("checks") or []:
            same = [c for c in new_checks if _label(c) == _label(check)]
            if not same:
                out.append(f"rule {name!r}: check {check.get('type')!r} removed")
                continue
            changes = _check_loosening(check, same[0])
            out.extend(f"rule {name!r}: check {check.get('type')!r}: {c}" for c in changes)
            new_checks.remove(same[0])
    return out


def _label(check: dict[str, Any]) -> Any:
    return check.get("id") or check.get("type")


def _check_loosening(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if before == after or _stricter_scalar(key, before, after):
            continue
        out.append(f"{key} {before!r} -> {after!r}")
    return out


def _stricter_scalar(key: str, before: Any, after: Any) -> bool:
    """Whether a changed value is known to be stricter: a lower number (limits, budgets, caps), a stronger
    mode, or failing closed."""
    if key == "mode" and before in MODE_STRENGTH and after in MODE_STRENGTH:
        return MODE_STRENGTH[str(after)] > MODE_STRENGTH[str(before)]
    if key == "on_store_error":
        return bool(after == "block")
    numbers = (int, float)
    if isinstance(before, numbers) and isinstance(after, numbers) and not isinstance(before, bool):
        return bool(after < before)
    # a limit where there was none
    return bool(before is None and isinstance(after, numbers) and not isinstance(after, bool))
