"""`config/policies.yaml`, typed: rules that bind checks to who calls what.

    rules:
      - name: apps
        match: {roles: [app]}                 # keys, principals, roles, routers, prompts, indexes, models
        checks:
          - {type: rate_limit, rpm: 600, tpm: 200000}
          - {type: pii, mode: redact}

Every rule whose `match` fits a request applies (all fields given must match; a field matches when any
of its glob patterns does; no `match` means every request). The check union is built from the checks
registered in the `opsgate.checks` group, so a plugin's check is parsed exactly like a built-in one.
The policy's content hash is the sha256 of the parsed spec as canonical JSON.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, create_model, model_validator

from gateway import extensions
from gateway.policy.base import CheckConfig, PolicyCheck, Subject
from gateway.principals import normalise
from gateway.registry.hashing import content_hash
from gateway.yamlspec import StrictModel, load_spec_text

POLICY_FILE = "policies.yaml"
Globs = list[Annotated[str, Field(min_length=1)]]


class Match(StrictModel):
    """Which requests a rule governs. Patterns are shell globs (`team-*`)."""

    keys: Globs | None = Field(None, description="Key ids (key_...).")
    principals: Globs | None = None
    roles: Globs | None = None
    routers: Globs | None = None
    prompts: Globs | None = None
    indexes: Globs | None = None
    models: Globs | None = None
    routes: Globs | None = Field(None, description="chat, embedding or ml.")


class Rule(StrictModel):
    name: str = Field(pattern=r"^[a-zA-Z0-9_.-]{1,64}$")
    match: Match = Match()
    checks: list[CheckConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _distinct_ids(self) -> Rule:
        seen: set[str] = set()
        for check in self.checks:
            if check.label in seen:
                raise ValueError(
                    f"two {check.type} checks in rule {self.name!r}: give each an `id` to tell them apart"
                )
            seen.add(check.label)
        return self


class PolicySpec(StrictModel):
    rules: list[Rule] = Field(default_factory=list)
    on_store_error: Literal["allow", "block"] = Field(
        "allow",
        description="When the limit store (Redis) fails: allow (fail open, decision 'error') or block (503).",
    )

    @model_validator(mode="after")
    def _distinct_names(self) -> PolicySpec:
        names = [r.name for r in self.rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"rule names must be unique; repeated: {', '.join(dupes)}")
        return self


def spec_model(checks: Mapping[str, type[PolicyCheck[Any]]]) -> type[PolicySpec]:
    """PolicySpec whose checks are the union of the registered checks' configs, by `type`."""
    configs = tuple(cls.config_model for cls in checks.values())
    if not configs:
        return PolicySpec
    union: Any = Annotated[Union[configs], Field(discriminator="type")] if len(configs) > 1 else configs[0]  # noqa: UP007
    rule = create_model("Rule", __base__=Rule, checks=(list[union], Field(min_length=1)))
    spec: type[PolicySpec] = create_model(
        "PolicySpec",
        __base__=PolicySpec,
        rules=(list[rule], Field(default_factory=list)),
    )
    return spec


def policy_model() -> type[PolicySpec]:
    """The policy file's model with the checks installed now (the registry parses policy versions with it)."""
    return spec_model(registered_checks())


def registered_checks() -> dict[str, type[PolicyCheck[Any]]]:
    found: dict[str, type[PolicyCheck[Any]]] = {}
    for name, cls in extensions.load(extensions.CHECKS).items():
        if not (isinstance(cls, type) and issubclass(cls, PolicyCheck)):
            raise TypeError(f"opsgate.checks entry {name!r} is not a PolicyCheck class")
        found[cls.type] = cls
    return found


def compile_globs(patterns: list[str] | None) -> re.Pattern[str] | None:
    if patterns is None:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


@dataclass(frozen=True, slots=True)
class CompiledMatch:
    """A rule's match, compiled once: each field a regex, or None for 'any'."""

    keys: re.Pattern[str] | None
    principals: re.Pattern[str] | None
    roles: re.Pattern[str] | None
    routes: re.Pattern[str] | None
    targets: tuple[tuple[str, re.Pattern[str]], ...]

    @classmethod
    def of(cls, match: Match) -> CompiledMatch:
        targets = []
        for kind, patterns in (
            ("router", match.routers),
            ("prompt", match.prompts),
            ("index", match.indexes),
            ("model", match.models),
        ):
            compiled = compile_globs(patterns)
            if compiled is not None:
                targets.append((kind, compiled))
        return cls(
            compile_globs(match.keys),
            # keys hold principals normalised (gateway/principals.py): `Mallory@Example.com` in a rule is the
            # principal `mallory@example.com`, as four-eyes reads it, not a pattern that never matches
            compile_globs(
                [normalise(p) or p for p in match.principals] if match.principals is not None else None
            ),
            compile_globs(match.roles),
            compile_globs(match.routes),
            tuple(targets),
        )

    def fits(self, subject: Subject) -> bool:
        if self.keys is not None and not self.keys.match(subject.key_id):
            return False
        if self.principals is not None and not self.principals.match(subject.principal):
            return False
        if self.roles is not None and not any(self.roles.match(r) for r in subject.roles):
            return False
        if self.routes is not None and not self.routes.match(subject.route):
            return False
        return all(any(p.match(n) for n in subject.names(kind)) for kind, p in self.targets)


@dataclass(frozen=True)
class LoadedPolicy:
    spec: PolicySpec
    hash: str
    source: str  # the file it came from, or "(none)"

    @property
    def short_hash(self) -> str:
        return self.hash[:12]

    @property
    def ref(self) -> str:
        return f"policy:{self.short_hash}"


def load_policy(
    file: Path, checks: Mapping[str, type[PolicyCheck[Any]]], *, display: str | None = None
) -> LoadedPolicy:
    """Parse the policy file (a missing file means no rules). Errors name the file, line and field."""
    model = spec_model(checks)
    shown = display or str(file)
    present = os.path.lexists(file)  # a link is present, and refused: never read through
    if present:  # config/policies.yaml is committed by authors: read like their other files (no link)
        from gateway.registry.tree import read_author_text

        spec = load_spec_text(read_author_text(file.parent.parent, file, shown), model, shown)
    else:
        spec = model()
    return LoadedPolicy(spec, content_hash(spec), shown if present else "(none)")


def parse_policy(
    text: str, checks: Mapping[str, type[PolicyCheck[Any]]], path: str = POLICY_FILE
) -> LoadedPolicy:
    spec = load_spec_text(text, spec_model(checks), path)
    return LoadedPolicy(spec, content_hash(spec), path)
