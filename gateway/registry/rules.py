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
from collections.abc import Callable, Iterable
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


def protected_aliases_in_force(engine: Engine, configured: Iterable[str]) -> tuple[str, ...]:
    """The protected aliases of the governance rules version at `production`, as the gateway serves them
    (gateway/flow/access.py); `configured` (config/gateway.yaml's) only until a rules version exists. A
    tightening committed to the file but not yet approved, or a loosening, counts only once promoted."""
    served = served_spec(engine, "governance")
    aliases = served.get("protected_aliases") if served is not None else None
    return tuple(aliases) if isinstance(aliases, dict) else tuple(configured)


def served_ref(engine: Engine, kind: str) -> str:
    rule = RULE_KINDS[kind]
    with Session(engine) as s:
        alias = s.get(Alias, (rule.kind, rule.name, SERVED_ALIAS))
    return f"{rule.kind}:{rule.name}@{alias.version}" if alias else "(none)"


# -- loosening ----------------------------------------------------------------------------------------

MODE_STRENGTH = {"off": 0, "log": 1, "flag": 2, "warn": 2, "redact": 3, "block": 4}
SEVERITIES = ("info", "warning", "critical")
# Numbers known to tighten one way; any other number that changes loosens (a plugin's check, a new field).
LOWER_IS_STRICTER = frozenset(
    {
        "rpm", "tpm", "usd_per_day", "usd_per_month", "max_input_tokens", "max_output_tokens",  # policy limits
        "for_", "for", "min_samples", "evaluate_every_s",  # alerts: sooner, on fewer samples, more often
    }
)  # fmt: skip
HIGHER_IS_STRICTER = frozenset({"reserve_output_tokens", "approvals", "retries"})
# Lists known to tighten by growing (more kinds, stages, terms, screened roles) or by shrinking (exceptions).
GROWING_IS_STRICTER = frozenset({"kinds", "apply_to", "terms", "patterns", "roles", "receivers"})
SHRINKING_IS_STRICTER = frozenset({"allow", "approver_roles", "requester_roles", "registrar_roles"})


def loosening(kind: str, old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """How `new` loosens `old` (empty when it does not): one line per loosened rule. Anything not known to
    be stricter counts as loosening (a changed match, a new value of an unknown field, a number whose
    direction is not known)."""
    if old is None:
        return []
    if kind == "governance":
        return _governance_loosening(old, new)
    if kind == "policy":
        return _policy_loosening(old, new)
    if kind == "alert":
        return _alert_loosening(old, new)
    return _changes(old, new, "")


def _changes(
    old: dict[str, Any], new: dict[str, Any], where: str, *, skip: tuple[str, ...] = ()
) -> list[str]:
    """Every field of a mapping that changed in a way not known to be stricter."""
    out = []
    for key in sorted(set(old) | set(new)):
        if key in skip:
            continue
        before, after = old.get(key), new.get(key)
        if before == after or _stricter(key, before, after):
            continue
        out.append(f"{where}{key} {before!r} -> {after!r}")
    return out


def _stricter(key: str, before: Any, after: Any) -> bool:
    """Whether a changed value is known to be stricter: a limit lowered (or set where there was none), a
    count of approvals or retries raised, a stronger mode, failing closed, four-eyes turned on, a list of
    what is checked grown or of exceptions shrunk."""
    numbers = (int, float)
    if key == "mode" and before in MODE_STRENGTH and after in MODE_STRENGTH:
        return MODE_STRENGTH[str(after)] > MODE_STRENGTH[str(before)]
    if key == "on_store_error":
        return bool(after == "block")
    if key == "four_eyes":
        return after is True
    if key == "require_eval":
        return before is None and after is not None
    if key == "description":
        return True
    if key == "severity" and before in SEVERITIES and after in SEVERITIES:
        return SEVERITIES.index(str(after)) > SEVERITIES.index(str(before))
    if key in LOWER_IS_STRICTER:
        if before is None and isinstance(after, numbers) and not isinstance(after, bool):
            return True  # a limit where there was none
        return _numbers(before, after) and after < before
    if key in HIGHER_IS_STRICTER:
        return _numbers(before, after) and after > before
    if key in GROWING_IS_STRICTER or key in SHRINKING_IS_STRICTER:
        old, new = _members(before), _members(after)
        if old is None or new is None:
            return False
        return old <= new if key in GROWING_IS_STRICTER else new <= old
    return False


def _numbers(*values: Any) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _members(value: Any) -> set[str] | None:
    """A list's (or a mapping's) members, comparable as a set; None for anything else."""
    if isinstance(value, dict):
        return {f"{k}={v!r}" for k, v in value.items()}
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return set(value)
    return None


def _alert_loosening(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Alert rules loosen when they would tell fewer people, later, or about less: a rule or receiver
    removed, a receiver's address, secret or delivery changed, a threshold moved away from the breach, a
    longer `for`, a slower evaluation."""
    out = _changes(old, new, "", skip=("receivers", "rules"))
    new_receivers = new.get("receivers") or {}
    for name, receiver in (old.get("receivers") or {}).items():
        if name not in new_receivers:
            out.append(f"receiver {name!r} removed")
            continue
        out.extend(_changes(receiver, new_receivers[name], f"receiver {name!r}: "))
    new_rules = {r["name"]: r for r in new.get("rules") or []}
    for rule in old.get("rules") or []:
        other = new_rules.get(rule["name"])
        if other is None:
            out.append(f"rule {rule['name']!r} removed")
            continue
        nearer: dict[str, Any] = {}  # a threshold moved towards the breach (same op): stricter
        if other.get("op") == rule.get("op") and _numbers(rule.get("threshold"), other.get("threshold")):
            above = str(rule.get("op", ">")).startswith(">")
            if (
                (other["threshold"] < rule["threshold"])
                if above
                else (other["threshold"] > rule["threshold"])
            ):
                nearer["threshold"] = other["threshold"]
        out.extend(_changes({**rule, **nearer}, other, f"rule {rule['name']!r}: "))
    return out


def _governance_loosening(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out = _changes(old, new, "", skip=("protected_aliases",))
    new_aliases = new.get("protected_aliases") or {}
    for alias, rule in (old.get("protected_aliases") or {}).items():
        if alias not in new_aliases:
            out.append(f"alias {alias!r} is no longer protected")
            continue
        out.extend(_changes(rule, new_aliases[alias], f"{alias}: "))
    return out


def _policy_loosening(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out = _changes(old, new, "", skip=("rules",))
    new_rules = {r.get("name") or str(i): r for i, r in enumerate(new.get("rules") or [])}
    for i, rule in enumerate(old.get("rules") or []):
        name = rule.get("name") or str(i)
        other = new_rules.get(name)
        if other is None:
            out.append(f"rule {name!r} removed")
            continue
        if other.get("match") != rule.get("match"):
            out.append(f"rule {name!r}: its match changed")
        out.extend(_changes(rule, other, f"rule {name!r}: ", skip=("match", "checks")))
        new_checks = list(other.get("checks") or [])
        for check in rule.get("checks") or []:
            same = [c for c in new_checks if _label(c) == _label(check)]
            if not same:
                out.append(f"rule {name!r}: check {check.get('type')!r} removed")
                continue
            out.extend(_changes(check, same[0], f"rule {name!r}: check {check.get('type')!r}: "))
            new_checks.remove(same[0])
    return out


def _label(check: dict[str, Any]) -> Any:
    return check.get("id") or check.get("type")
