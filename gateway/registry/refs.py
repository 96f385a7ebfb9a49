"""Artifact references: `kind:name`, `kind:name@7`, `kind:name@staging`, or a bare `name`."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from gateway import kinds
from gateway.errors import InvalidRequest

# What a reference without `@` means wherever a version is served or pinned: the request path, eval
# targets, index embedders, `opsgate index query`. Commands that inspect (show, diff, render) use `latest`.
DEFAULT_ALIAS = "production"
# Governance rules (gateway/registry/rules.py): single-file kinds, versioned and promoted like the rest.
RULE_KINDS = ("policy", "governance", "alert")
_REF = re.compile(
    r"^(?:(?P<kind>[a-z]+):)?(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,127})(?:@(?P<sel>[A-Za-z0-9._-]+))?$"
)


ALIAS_RULE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
MAX_VERSION = 2**31 - 1  # versions are 32-bit integers in every database


def validate_alias(alias: str, *, param: str = "alias") -> str:
    """The one rule for alias names: lowercase ASCII letter first, then letters, digits, `_` or `-`, at most
    64 characters. `Production`, `production ` or `production` plus an invisible character are other
    names that would look like a protected alias and move without its rule, so they are refused."""
    if not isinstance(alias, str) or not ALIAS_RULE.fullmatch(alias):
        raise InvalidRequest(
            f"{alias!r} is not a valid alias name: an alias is a lowercase letter followed by up to 63"
            " lowercase letters, digits, '_' or '-' (e.g. production, staging, canary)",
            param=param,
            code="invalid_alias",
        )
    return alias


@dataclass(frozen=True, slots=True)
class Ref:
    kind: str | None
    name: str
    selector: str | None = None  # a version number, an alias, or None (the default alias)

    @property
    def version(self) -> int | None:
        return int(self.selector) if self.selector is not None and self.selector.isdigit() else None

    @property
    def alias(self) -> str | None:
        return self.selector if self.selector is not None and not self.selector.isdigit() else None

    def __str__(self) -> str:
        head = f"{self.kind}:{self.name}" if self.kind else self.name
        return f"{head}@{self.selector}" if self.selector else head


MAX_REF_CHARS = 300  # longer than any reference can be (kind, a 128-character name, a selector)


def parse_ref(text: str, *, default_kind: str | None = None, param: str | None = None) -> Ref:
    if len(text) > MAX_REF_CHARS:  # refused without entering the cache: 4096 cached 1 MB names are 4 GB
        raise InvalidRequest(
            f"the artifact reference is {len(text)} characters long; a reference is kind:name@selector"
            " with a name of at most 128 characters",
            param=param,
            code="invalid_reference",
        )
    return _parse_ref(text, default_kind, param)


@functools.lru_cache(maxsize=4096)
def _parse_ref(text: str, default_kind: str | None, param: str | None) -> Ref:
    """Every request parses its model name: the few names clients use are parsed once."""
    match = _REF.match(text.strip())
    if not match:
        raise InvalidRequest(
            f"{text!r} is not an artifact reference; use kind:name, kind:name@VERSION or kind:name@ALIAS",
            param=param,
            code="invalid_reference",
        )
    kind = match.group("kind") or default_kind
    if kind is not None and kind not in kinds.registry() and kind not in RULE_KINDS:
        raise InvalidRequest(
            f"unknown artifact kind {kind!r}; kinds are: {', '.join([*kinds.names(), *RULE_KINDS])}",
            param=param,
            code="invalid_reference",
        )
    selector = match.group("sel")
    if selector is not None and selector.isdigit() and int(selector) > MAX_VERSION:
        raise InvalidRequest(
            f"version {selector} in {text!r} is out of range (versions go up to {MAX_VERSION})",
            param=param,
            code="invalid_reference",
        )
    return Ref(kind, match.group("name"), selector)
