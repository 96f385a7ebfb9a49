"""`opsgate sync`: register what the repository holds at HEAD.

For each artifact file whose canonical content hash is new, a new immutable version records the commit
that last changed the file, its author and message. Unchanged content is a no-op. Invalid files are
reported with file, line and field while valid ones still sync. A working copy with uncommitted changes
under prompts/ or config/ is refused unless `allow_dirty`, and versions from such files are marked dirty.
Indexes are not registered here: `opsgate index build` registers an index version once it is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from gateway.db.models import ArtifactVersion
from gateway.errors import ConfigError, Conflict
from gateway.registry import audit
from gateway.registry.blobs import BlobStore
from gateway.registry.files import KIND_DIRS, ArtifactFile, load_artifacts
from gateway.registry.git import GitRepo
from gateway.registry.store import SourceInfo, VersionRecord, register_version, set_alias

SYNC_KINDS = ("prompt", "router", "model")
VALIDATE_ONLY = ("index",)
WATCHED = ["prompts", "config"]


@dataclass
class SyncReport:
    commit: str | None
    registered: list[VersionRecord] = field(default_factory=list)
    unchanged: list[VersionRecord] = field(default_factory=list)
    errors: list[ConfigError] = field(default_factory=list)
    dirty_files: list[str] = field(default_factory=list)


def _source(repo: GitRepo | None, art: ArtifactFile, dirty_files: set[str], head: str | None) -> SourceInfo:
    if repo is None:
        return SourceInfo(path=art.path, dirty=True)
    touched = {art.path} | {str(Path(art.path).parent / r) for r in art.referenced}
    dirty = bool(touched & dirty_files)
    commit = repo.last_commit(art.path)
    if dirty or commit is None:
        return SourceInfo(
            path=art.path, commit=head, author=repo.user(), message="uncommitted changes", dirty=True
        )
    return SourceInfo(path=art.path, commit=commit.sha, author=commit.author, message=commit.message)


def _bare_name_clash(session: Session, art: ArtifactFile) -> str | None:
    if art.kind not in ("prompt", "router"):
        return None
    other = "router" if art.kind == "prompt" else "prompt"
    hit = session.scalar(
        select(ArtifactVersion.id)
        .where(ArtifactVersion.kind == other, ArtifactVersion.name == art.name)
        .limit(1)
    )
    return other if hit is not None else None


def register_artifact(
    engine: Engine,
    art: ArtifactFile,
    source: SourceInfo,
    *,
    actor: str,
    bootstrap_alias: str | None = None,
    blobs: BlobStore | None = None,
) -> tuple[VersionRecord, bool]:
    """Register one file's content (no-op when known). `bootstrap_alias` is set for a first version only.

    Referenced binary files (model files, reference data) go to the blob store under the version's hash,
    so the version stays servable whatever later happens to the files in the project."""
    if blobs is not None and art.referenced and art.stored_files() is None:
        blobs.stash(art.content_hash, art.referenced)

    def work(session: Session) -> tuple[VersionRecord, bool]:
        clash = _bare_name_clash(session, art)
        if clash:
            raise ConfigError(
                f"the bare name {art.name!r} is already a {clash} in the registry; a {art.kind} may not share it",
                path=art.path,
                line=1,
            )
        record, created = register_version(
            session,
            kind=art.kind,
            name=art.name,
            spec=art.spec_json(),
            content_hash=art.content_hash,
            source=source,
            actor=actor,
            files=art.stored_files(),
        )
        if created and bootstrap_alias and record.version == 1:
            set_alias(
                session,
                kind=art.kind,
                name=art.name,
                alias=bootstrap_alias,
                version=1,
                actor=actor,
                action="alias.bootstrap",
                reason="first version of a new artifact on a fresh install",
            )
        return record, created

    return audit.write_transaction(engine, work)


def sync(
    engine: Engine,
    project_dir: Path,
    *,
    actor: str,
    allow_dirty: bool = False,
    blobs: BlobStore | None = None,
) -> SyncReport:
    repo = GitRepo(project_dir)
    if not repo.is_repo():
        raise ConfigError(f"{project_dir} is not a git repository: `opsgate sync` registers what git holds")
    head = repo.head()
    dirty = repo.dirty_paths([p for p in WATCHED if (project_dir / p).exists()])
    if dirty and not allow_dirty:
        shown = ", ".join(dirty[:10]) + (" ..." if len(dirty) > 10 else "")
        raise Conflict(
            f"the working copy has uncommitted changes ({shown}); commit them, or pass --allow-dirty to register"
            " them as dirty versions",
            code="dirty_working_copy",
        )
    report = SyncReport(commit=head, dirty_files=dirty)
    artifacts, errors = load_artifacts(project_dir, SYNC_KINDS)
    _, index_errors = load_artifacts(project_dir, VALIDATE_ONLY)
    report.errors.extend(errors + index_errors)
    dirty_set = set(dirty)
    for art in artifacts:
        try:
            source = _source(repo, art, dirty_set, head)
            record, created = register_artifact(engine, art, source, actor=actor, blobs=blobs)
        except ConfigError as exc:
            report.errors.append(exc)
            continue
        (report.registered if created else report.unchanged).append(record)
    return report


def bootstrap(
    engine: Engine,
    project_dir: Path,
    *,
    actor: str,
    alias: str = "production",
    blobs: BlobStore | None = None,
) -> list[VersionRecord]:
    """First start of a fresh install: artifacts with no version at all are registered from the working
    tree and their `alias` points at that first version (audited as a bootstrap). Once an artifact exists,
    its file is governed: changes go through `opsgate sync` and promotion. Invalid files stop start-up."""
    artifacts, errors = load_artifacts(project_dir, SYNC_KINDS)
    if errors:
        raise errors[0] if len(errors) == 1 else ConfigError("; ".join(e.message for e in errors))
    repo = GitRepo(project_dir)
    use_git = repo.is_repo()
    head = repo.head() if use_git else None
    dirty = (
        set(repo.dirty_paths([p for p in KIND_DIRS.values() if (project_dir / p).exists()]))
        if use_git
        else set()
    )
    existing = _existing_names(engine)
    created: list[VersionRecord] = []
    for art in artifacts:
        if (art.kind, art.name) in existing:
            continue
        source = _source(repo if use_git else None, art, dirty, head)
        record, new = register_artifact(engine, art, source, actor=actor, bootstrap_alias=alias, blobs=blobs)
        if new:
            created.append(record)
    return created


def _existing_names(engine: Engine) -> set[tuple[str, str]]:
    with Session(engine) as s:
        return {(k, n) for k, n in s.execute(select(ArtifactVersion.kind, ArtifactVersion.name).distinct())}


def drifted(engine: Engine, project_dir: Path, *, alias: str = "production") -> list[str]:
    """Artifacts whose file no longer matches the version their alias serves (a hint to sync and promote)."""
    from gateway.registry.store import VersionStore

    artifacts, _ = load_artifacts(project_dir, SYNC_KINDS)
    store = VersionStore(engine)
    aliases = store.aliases()
    hashes = {(r.kind, r.name, r.version): r.content_hash for r in store.versions()}
    out: list[str] = []
    for art in artifacts:
        version = aliases.get((art.kind, art.name), {}).get(alias)
        if version is not None and hashes.get((art.kind, art.name, version)) != art.content_hash:
            out.append(f"{art.path} differs from {art.kind}:{art.name}@{alias} (version {version})")
    return out
