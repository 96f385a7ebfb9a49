"""Versions and aliases in the database: immutable, content-hashed versions; movable aliases.

Registering content whose hash a version already has is a no-op. `latest` moves by itself; other
aliases move through the promotion service (see promotion.py), never from here directly.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from gateway import kinds
from gateway.db.generation import as_utc, bump_generation, utcnow
from gateway.db.models import Alias, ArtifactVersion
from gateway.errors import InvalidRequest, NotFound
from gateway.registry import audit
from gateway.registry.refs import DEFAULT_ALIAS, Ref, validate_alias
from gateway.shapes import ArtifactRef

LATEST = "latest"


@dataclass(frozen=True)
class VersionRecord:
    kind: str
    name: str
    version: int
    content_hash: str
    spec: dict[str, Any]
    source_path: str | None
    git_commit: str | None
    git_author: str | None
    git_message: str | None
    dirty: bool
    created_at: datetime
    created_by: str
    files: dict[str, Any] | None = None
    authors: tuple[str, ...] = ()  # everyone who committed to a file of it since the previous version

    @functools.cached_property
    def ref(self) -> ArtifactRef:
        return ArtifactRef(self.kind, self.name, self.version, self.content_hash)


@dataclass(frozen=True)
class SourceInfo:
    path: str | None = None
    commit: str | None = None
    author: str | None = None
    message: str | None = None
    dirty: bool = False
    # everyone who committed to any file of the version (spec and referenced files) since the previous
    # version of the artifact; empty means just `author`
    authors: tuple[str, ...] = ()

    def all_authors(self) -> list[str]:
        return list(dict.fromkeys([*self.authors, *([self.author] if self.author else [])]))


def to_record(row: ArtifactVersion) -> VersionRecord:
    return VersionRecord(
        row.kind,
        row.name,
        row.version,
        row.content_hash,
        dict(row.spec),
        row.source_path,
        row.git_commit,
        row.git_author,
        row.git_message,
        bool(row.dirty),
        as_utc(row.created_at),
        row.created_by,
        dict(row.files) if row.files else None,
        tuple(row.authors) if row.authors else ((row.git_author,) if row.git_author else ()),
    )


def previous_commit(engine: Engine, kind: str, name: str) -> str | None:
    """The commit of the newest version of an artifact that has one (where its authorship starts)."""
    with Session(engine) as s:
        return s.scalar(
            select(ArtifactVersion.git_commit)
            .where(
                ArtifactVersion.kind == kind,
                ArtifactVersion.name == name,
                ArtifactVersion.git_commit.is_not(None),
            )
            .order_by(ArtifactVersion.version.desc())
            .limit(1)
        )


def register_version(
    session: Session,
    *,
    kind: str,
    name: str,
    spec: dict[str, Any],
    content_hash: str,
    source: SourceInfo,
    actor: str,
    files: dict[str, Any] | None = None,
) -> tuple[VersionRecord, bool]:
    """Inside the caller's transaction: add a version unless this content is already registered."""
    existing = session.scalars(
        select(ArtifactVersion).where(
            ArtifactVersion.kind == kind,
            ArtifactVersion.name == name,
            ArtifactVersion.content_hash == content_hash,
        )
    ).first()
    if existing is not None:
        return to_record(existing), False
    current = session.scalar(
        select(func.max(ArtifactVersion.version)).where(
            ArtifactVersion.kind == kind, ArtifactVersion.name == name
        )
    )
    row = ArtifactVersion(
        kind=kind,
        name=name,
        version=(current or 0) + 1,
        content_hash=content_hash,
        spec=spec,
        source_path=source.path,
        git_commit=source.commit,
        git_author=source.author,
        git_message=source.message,
        dirty=source.dirty,
        created_at=utcnow(),
        created_by=actor,
        files=files,
        authors=source.all_authors(),
    )
    session.add(row)
    session.flush()
    record = to_record(row)
    audit.append(
        session,
        actor=actor,
        action="version.register",
        target=f"{kind}:{name}@{row.version}",
        after={"hash": content_hash, "commit": source.commit, "path": source.path, "dirty": source.dirty},
    )
    set_alias(session, kind=kind, name=name, alias=LATEST, version=row.version, actor=actor, audited=False)
    bump_generation(session)
    return record, True


def set_alias(
    session: Session,
    *,
    kind: str,
    name: str,
    alias: str,
    version: int,
    actor: str,
    audited: bool = True,
    reason: str | None = None,
    action: str = "alias.move",
) -> int | None:
    """Point an alias at a version; returns the version it pointed at before (None if new). Every path that
    moves an alias comes here, so the one alias-name rule is checked here too (gateway/registry/refs.py)."""
    validate_alias(alias)
    row = session.get(Alias, (kind, name, alias))
    before = row.version if row is not None else None
    if row is None:
        session.add(
            Alias(kind=kind, name=name, alias=alias, version=version, updated_at=utcnow(), updated_by=actor)
        )
    else:
        row.version = version
        row.updated_at = utcnow()
        row.updated_by = actor
    session.flush()
    if audited:
        audit.append(
            session,
            actor=actor,
            action=action,
            target=f"{kind}:{name}@{alias}",
            before={"version": before},
            after={"version": version},
            reason=reason,
        )
    bump_generation(session)
    return before


class VersionStore:
    """Read side of the registry (writes go through `register_version` / the promotion service)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def versions(self, kind: str | None = None, name: str | None = None) -> list[VersionRecord]:
        with Session(self.engine) as s:
            q = select(ArtifactVersion).order_by(
                ArtifactVersion.kind, ArtifactVersion.name, ArtifactVersion.version
            )
            if kind:
                q = q.where(ArtifactVersion.kind == kind)
            if name:
                q = q.where(ArtifactVersion.name == name)
            return [to_record(r) for r in s.scalars(q)]

    def get(self, kind: str, name: str, version: int) -> VersionRecord | None:
        with Session(self.engine) as s:
            row = s.scalars(
                select(ArtifactVersion).where(
                    ArtifactVersion.kind == kind,
                    ArtifactVersion.name == name,
                    ArtifactVersion.version == version,
                )
            ).first()
            return to_record(row) if row else None

    def resolve(self, ref: Ref, *, default_alias: str = DEFAULT_ALIAS) -> VersionRecord:
        """The version a reference names: by number, by alias, or by the default alias. Read from the
        database, for commands and builds; the request path resolves from memory (gateway/snapshot.py)."""
        if ref.kind is None:  # e.g. GET /admin/diff?a=support_qa (was an AssertionError: a 500)
            raise InvalidRequest(
                f"{str(ref)!r} does not say its kind; use kind:name@VERSION or kind:name@ALIAS (kinds:"
                f" {', '.join(kinds.names())})",
                code="invalid_reference",
            )
        if ref.version is not None:
            record = self.get(ref.kind, ref.name, ref.version)
            if record is None:
                raise NotFound(f"{ref.kind}:{ref.name}@{ref.version} does not exist")
            return record
        aliases = self.aliases(ref.kind, ref.name).get((ref.kind, ref.name))
        if not aliases:
            raise NotFound(f"{ref.kind}:{ref.name} does not exist in the registry (run `opsgate sync`)")
        alias = ref.alias or default_alias
        if alias not in aliases:
            known = ", ".join(f"{a}->{v}" for a, v in sorted(aliases.items()))
            raise NotFound(f"{ref.kind}:{ref.name} has no alias {alias!r} (aliases: {known})")
        record = self.get(ref.kind, ref.name, aliases[alias])
        if record is None:
            raise NotFound(f"{ref.kind}:{ref.name}@{alias} points at a missing version")
        return record

    def aliases(
        self, kind: str | None = None, name: str | None = None
    ) -> dict[tuple[str, str], dict[str, int]]:
        """(kind, name) -> {alias: version}."""
        with Session(self.engine) as s:
            q = select(Alias)
            if kind:
                q = q.where(Alias.kind == kind)
            if name:
                q = q.where(Alias.name == name)
            out: dict[tuple[str, str], dict[str, int]] = {}
            for row in s.scalars(q):
                out.setdefault((row.kind, row.name), {})[row.alias] = row.version
            return out
