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
_REF = re.compile(
    r"^(?:(?P<kind>[a-z]+):)?(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,127})(?:@(?P<sel>[A-Za-z0-9._-]+))?$"
)


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
    if kind is not None and kind not in kinds.registry():
        raise InvalidRequest(
            f"unknown artifact kind {kind!r}; kinds are: {', '.join(kinds.names())}",
            param=param,
            code="invalid_reference",
        )
    return Ref(kind, match.group("name"), match.group("sel"))
