"""Read-side views of the registry shared by the CLI and the admin API: listings, show, diff, render."""

from __future__ import annotations

import difflib
from typing import Any

import yaml
from sqlalchemy import Engine

from gateway.errors import NotFound
from gateway.prompts.render import render_messages
from gateway.prompts.spec import PromptSpec
from gateway.registry.refs import Ref
from gateway.registry.store import LATEST, VersionRecord, VersionStore


def resolve_record(store: VersionStore, ref: Ref, *, default_alias: str = LATEST) -> VersionRecord:
    """A version for a command that inspects it (show, diff, render): a bare name means `latest`."""
    return store.resolve(ref, default_alias=default_alias)


def version_dict(record: VersionRecord, aliases: dict[str, int] | None = None) -> dict[str, Any]:
    return {
        "kind": record.kind,
        "name": record.name,
        "version": record.version,
        "ref": record.ref,
        "hash": record.content_hash,
        "aliases": sorted(a for a, v in (aliases or {}).items() if v == record.version),
        "source_path": record.source_path,
        "git_commit": record.git_commit,
        "git_author": record.git_author,
        "git_message": record.git_message,
        "dirty": record.dirty,
        "created_at": record.created_at.isoformat(),
        "created_by": record.created_by,
        "spec": record.spec,
        "files": sorted(record.files or {}),
    }


def artifact_list(engine: Engine, kind: str | None = None) -> list[dict[str, Any]]:
    store = VersionStore(engine)
    aliases = store.aliases(kind)
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for record in store.versions(kind):
        entry = out.setdefault(
            (record.kind, record.name),
            {
                "kind": record.kind,
                "name": record.name,
                "versions": 0,
                "aliases": aliases.get((record.kind, record.name), {}),
            },
        )
        entry["versions"] += 1
        entry["latest_hash"] = record.content_hash
    return list(out.values())


def artifact_detail(engine: Engine, kind: str, name: str) -> dict[str, Any]:
    store = VersionStore(engine)
    versions = store.versions(kind, name)
    if not versions:
        raise NotFound(f"{kind}:{name} does not exist in the registry")
    aliases = store.aliases(kind, name).get((kind, name), {})
    return {
        "kind": kind,
        "name": name,
        "aliases": aliases,
        "versions": [
            {k: v for k, v in version_dict(r, aliases).items() if k not in ("spec",)} for r in versions
        ],
    }


def spec_text(record: VersionRecord) -> str:
    text = yaml.safe_dump(record.spec, sort_keys=True, allow_unicode=True, width=100)
    for path, content in sorted((record.files or {}).items()):
        text += f"\n# --- file: {path}\n{content}"
    return text


def diff(a: VersionRecord, b: VersionRecord) -> str:
    lines = difflib.unified_diff(
        spec_text(a).splitlines(keepends=True),
        spec_text(b).splitlines(keepends=True),
        fromfile=a.ref,
        tofile=b.ref,
    )
    return "".join(lines)


def render(
    record: VersionRecord, variables: dict[str, Any], user_messages: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    spec = PromptSpec.model_validate(record.spec)
    return render_messages(spec, variables, templates=record.files) + user_messages
