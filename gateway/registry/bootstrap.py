"""Start-up registration of router files, so a fresh install serves its config with no extra step."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

from gateway.errors import ConfigError
from gateway.registry import audit
from gateway.registry.files import load_artifacts
from gateway.registry.store import SourceInfo, VersionRecord, register_version


def register_router_files(
    engine: Engine, project_dir: Path, *, actor: str
) -> list[tuple[VersionRecord, bool]]:
    """Register each router file whose content is new. Any invalid file stops start-up with its location."""
    artifacts, errors = load_artifacts(project_dir, ("router",))
    if errors:
        raise errors[0] if len(errors) == 1 else ConfigError("; ".join(e.message for e in errors))
    results: list[tuple[VersionRecord, bool]] = []
    for art in artifacts:
        spec = art.spec.model_dump(mode="json", exclude_defaults=True)

        def work(session, art=art, spec=spec):  # type: ignore[no-untyped-def]
            return register_version(
                session,
                kind=art.kind,
                name=art.name,
                spec=spec,
                content_hash=art.content_hash,
                source=SourceInfo(path=art.path),
                actor=actor,
            )

        results.append(audit.write_transaction(engine, work))
    return results
