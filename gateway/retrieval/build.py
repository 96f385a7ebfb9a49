"""`opsgate index build <name>`: manifest -> content hash -> (parse, chunk, embed, store) -> version.

The content hash covers the corpus manifest (each file's sha256), the chunker, the embedder (the
pinned router version for router embedders), the distance, the kept metadata and the build format;
a description edit does not rebuild. A hash that is already a version is a no-op (or, if that
version's collection is missing from the store, a rebuild of the same version). A new hash is parsed,
chunked and embedded into a staging collection, published under the version's collection name, and
only then registered (with its manifest in `index_builds`), so a registered version always has its
collection. The first version of an index also becomes `production` (an audited bootstrap) until the
first start has built the project's indexes (gateway/registry/bootstrap.py); after that, by promotion.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import orjson
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from gateway import kinds
from gateway.db.generation import utcnow
from gateway.db.locks import bootstrap_lock
from gateway.db.models import Alias, ArtifactVersion
from gateway.errors import ConfigError
from gateway.providers.minilm import MiniLMEmbedder
from gateway.registry import audit
from gateway.registry.bootstrap import (
    close_index_bootstrap,
    indexes_open,
    indexes_open_now,
    registry_open_now,
)
from gateway.registry.files import ArtifactFile, artifact_paths, load_artifact
from gateway.registry.git import GitRepo
from gateway.registry.store import (
    SourceInfo,
    VersionRecord,
    VersionStore,
    previous_commit,
    register_version,
    set_alias,
    to_record,
)
from gateway.registry.sync import uncommitted
from gateway.retrieval import lexical
from gateway.retrieval.chunkers import Chunk, chunk_document
from gateway.retrieval.embedders import (
    LocalVectorizer,
    RouterVectorizer,
    Vectorizer,
    local_identity,
    router_identity,
    router_record,
)
from gateway.retrieval.records import IndexBuild, build_of
from gateway.retrieval.sources import ParseFailure, SourceFile, manifest, parse
from gateway.retrieval.spec import IndexSpec, RouterEmbedder
from gateway.retrieval.store import ChromaStore, add_batches, collection_name, staging_name

log = logging.getLogger("opsgate.retrieval")
BUILD_FORMAT = 1  # bump when chunk ids, chunk metadata or stored text change
EMBED_GROUP = 512  # chunks per encode call; groups are cut from a longest-first order
BOOTSTRAP_ALIAS = "production"


class Progress(Protocol):
    """What a build reports as it goes (the CLI draws a rich progress bar from it)."""

    def files(self, total: int) -> None: ...
    def file_done(self, path: str, chunks: int, error: str | None) -> None: ...
    def chunks(self, total: int) -> None: ...
    def embedded(self, count: int) -> None: ...


class _Quiet:
    def files(self, total: int) -> None:
        return None

    def file_done(self, path: str, chunks: int, error: str | None) -> None:
        return None

    def chunks(self, total: int) -> None:
        return None

    def embedded(self, count: int) -> None:
        return None


@dataclass(frozen=True)
class BuildPlan:
    artifact: ArtifactFile
    spec: IndexSpec
    manifest: list[SourceFile]
    embedder: dict[str, Any]
    version_spec: dict[str, Any]
    content_hash: str
    router: VersionRecord | None = None


@dataclass
class BuildResult:
    status: Literal["built", "unchanged", "restored"]
    record: VersionRecord
    files: int = 0
    documents: int = 0
    chunks: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    bootstrapped: bool = False

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _Ingested:
    documents: int
    chunks: list[Chunk]
    skipped: list[dict[str, str]]
    embed_seconds: float


def index_file(project_dir: Path, name: str) -> ArtifactFile:
    for path in artifact_paths(project_dir, "index"):
        if path.stem == name:
            return load_artifact(project_dir, "index", path)
    known = ", ".join(p.stem for p in artifact_paths(project_dir, "index")) or "none"
    raise ConfigError(f"no index file {kinds.INDEX.folder}/{name}.yaml (indexes: {known})")


def content_hash(spec: IndexSpec, embedder: dict[str, Any], files: list[SourceFile]) -> str:
    built_from = {
        "format": [BUILD_FORMAT, lexical.FORMAT],
        "source": spec.source.model_dump(mode="json"),
        "chunker": spec.chunker.model_dump(mode="json"),
        "embedder": embedder,
        "distance": spec.distance,
        "metadata": spec.metadata,
        "manifest": [[f.path, f.sha256] for f in files],
    }
    return hashlib.sha256(orjson.dumps(built_from, option=orjson.OPT_SORT_KEYS)).hexdigest()


def lexical_dir(data_dir: Path, collection: str) -> Path:
    return data_dir / "lexical" / collection


class IndexBuilder:
    def __init__(
        self, engine: Engine, project_dir: Path, store: ChromaStore, data_dir: Path, minilm: MiniLMEmbedder
    ) -> None:
        self.engine = engine
        self.project_dir = project_dir
        self.store = store
        self.data_dir = data_dir
        self.minilm = minilm

    # -- planning (cheap: hashes files, loads no model) -------------------------------------------------

    def plan(self, name: str) -> BuildPlan:
        art = index_file(self.project_dir, name)
        spec = art.spec
        assert isinstance(spec, IndexSpec)
        files = manifest(self.project_dir, spec, data_dir=self.data_dir, spec_file=art)
        if not files:
            raise ConfigError(
                f"the sources of index {name!r} match no files under {self.project_dir}", path=art.path
            )
        # The full dump (defaults included): `type:` discriminators equal to their default must survive.
        version_spec = spec.model_dump(mode="json")
        router = None
        if isinstance(spec.embedder, RouterEmbedder):
            router = self._router_record(spec.embedder)
            identity = router_identity(spec.embedder, router)
            version_spec["embedder"] = {**spec.embedder.model_dump(mode="json"), "router": identity["router"]}
        else:
            identity = local_identity(spec.embedder)
        return BuildPlan(
            art, spec, files, identity, version_spec, content_hash(spec, identity, files), router
        )

    def _router_record(self, embedder: RouterEmbedder) -> VersionRecord:
        name = embedder.router.partition("@")[0]
        store = VersionStore(self.engine)
        records = {(r.name, r.version): r for r in store.versions("router", name)}
        aliases = store.aliases("router", name).get(("router", name), {})
        return router_record(records, aliases, embedder)

    # -- building ------------------------------------------------------------------------------------

    def build(self, name: str, *, actor: str, progress: Progress | None = None) -> BuildResult:
        plan = self.plan(name)
        return self.build_plan(plan, actor=actor, progress=progress)

    def build_plan(self, plan: BuildPlan, *, actor: str, progress: Progress | None = None) -> BuildResult:
        progress = progress or _Quiet()
        existing = self._version_with_hash(plan)
        if existing is not None:
            target = collection_name(existing.name, existing.version, existing.content_hash)
            if self.store.get(target, plan.embedder) is not None:
                return BuildResult("unchanged", existing, files=len(plan.manifest))
        started = time.perf_counter()
        staging = self.store.create_staging(
            staging_name(plan.spec.name, plan.content_hash), plan.embedder, plan.spec.distance
        )
        try:
            ingested = self._ingest(plan, staging, progress)
        except BaseException:
            self.store.delete(staging.name)
            raise
        version = existing.version if existing else self._next_version(plan.spec.name)
        target = collection_name(plan.spec.name, version, plan.content_hash)
        self._save_lexical(target, ingested.chunks)
        seconds = time.perf_counter() - started
        stats = {
            "files": len(plan.manifest),
            "documents": ingested.documents,
            "chunks": len(ingested.chunks),
            "skipped": ingested.skipped,
            "seconds": round(seconds, 3),
            "embed_seconds": round(ingested.embed_seconds, 3),
            "embedder": plan.embedder,
        }
        self.store.publish(
            staging,
            target,
            {
                "opsgate_index": plan.spec.name,
                "opsgate_version": version,
                "opsgate_hash": plan.content_hash,
                "chunks": len(ingested.chunks),
            },
            plan.embedder,
        )
        record, bootstrapped = self._register(plan, actor, stats, version)
        result = BuildResult(
            "restored" if existing else "built",
            record,
            files=len(plan.manifest),
            documents=ingested.documents,
            chunks=len(ingested.chunks),
            skipped=ingested.skipped,
            seconds=seconds,
            bootstrapped=bootstrapped,
        )
        log.info("index %s: %s %d chunks in %.1f s", record.ref, result.status, result.chunks, seconds)
        return result

    def _ingest(self, plan: BuildPlan, collection: Any, progress: Progress) -> _Ingested:
        chunks, skipped, documents = self._chunk_files(plan, progress)
        if not chunks:
            raise ConfigError(
                f"index {plan.spec.name!r}: nothing to index ({len(plan.manifest)} files, {len(skipped)} failed,"
                " the rest empty)",
                path=plan.artifact.path,
            )
        progress.chunks(len(chunks))
        vectorizer = self._vectorizer(plan)
        try:
            embed_seconds = self._embed_and_add(chunks, vectorizer, collection, progress)
        finally:
            vectorizer.close()
        return _Ingested(documents, chunks, skipped, embed_seconds)

    def _embed_and_add(
        self, chunks: list[Chunk], vectorizer: Vectorizer, collection: Any, progress: Progress
    ) -> float:
        """Embeds in groups while the previous group is added to chroma; returns the seconds spent embedding."""
        # Longest first, as SentenceTransformer.encode orders one call: groups pad little.
        order = sorted(range(len(chunks)), key=lambda i: -len(chunks[i].text))
        embed_seconds = 0.0
        with ThreadPoolExecutor(1, thread_name_prefix="opsgate-chroma-add") as pool:
            pending: Future[None] | None = None
            for start in range(0, len(order), EMBED_GROUP):
                group = [chunks[i] for i in order[start : start + EMBED_GROUP]]
                t0 = time.perf_counter()
                vectors = vectorizer.encode([c.text for c in group])
                embed_seconds += time.perf_counter() - t0
                if pending is not None:
                    pending.result()
                pending = pool.submit(
                    add_batches,
                    collection,
                    [c.id for c in group],
                    vectors,
                    [c.text for c in group],
                    [_chunk_metadata(c) for c in group],
                )
                progress.embedded(len(group))
            if pending is not None:
                pending.result()
        return embed_seconds

    def _chunk_files(
        self, plan: BuildPlan, progress: Progress
    ) -> tuple[list[Chunk], list[dict[str, str]], int]:
        progress.files(len(plan.manifest))
        chunks: list[Chunk] = []
        skipped: list[dict[str, str]] = []
        owners: dict[str, str] = {}
        documents = 0
        for entry in plan.manifest:
            try:
                docs = parse(self.project_dir, plan.spec, entry)
                clash = next((d.id for d in docs if d.id in owners), None)
                if clash is not None:
                    raise ParseFailure(
                        f"document id {clash!r} also comes from {owners[clash]}; ids must be unique"
                    )
                if len({d.id for d in docs}) != len(docs):
                    raise ParseFailure("the file repeats a document id; ids must be unique")
                file_chunks = [c for d in docs for c in chunk_document(d, plan.spec.chunker)]
            except ParseFailure as exc:
                skipped.append({"path": entry.path, "error": str(exc)})
                log.warning("index %s: skipped %s: %s", plan.spec.name, entry.path, exc)
                progress.file_done(entry.path, 0, str(exc))
                continue
            owners.update({d.id: entry.path for d in docs})
            documents += len(docs)
            chunks.extend(file_chunks)
            progress.file_done(entry.path, len(file_chunks), None)
        return chunks, skipped, documents

    def _vectorizer(self, plan: BuildPlan) -> Vectorizer:
        if plan.router is None:
            return LocalVectorizer(self.minilm)
        from gateway.providers import Adapters
        from gateway.providers.base import AdapterServices
        from gateway.routing.router import Router
        from gateway.routing.spec import RouterSpec
        from gateway.settings import project_egress

        assert isinstance(plan.spec.embedder, RouterEmbedder)
        adapters = Adapters(AdapterServices(self.minilm, project_egress(self.project_dir)))
        router = Router(
            RouterSpec.model_validate(plan.router.spec),
            version=plan.router.version,
            content_hash=plan.router.content_hash,
            adapters=adapters,
        )
        return RouterVectorizer(router, adapters, plan.spec.embedder.batch_size)

    def _save_lexical(self, collection: str, chunks: list[Chunk]) -> None:
        index = lexical.LexicalIndex.build([c.id for c in chunks], [c.text for c in chunks])
        index.save(lexical_dir(self.data_dir, collection))

    # -- registry --------------------------------------------------------------------------------------

    def _version_with_hash(self, plan: BuildPlan) -> VersionRecord | None:
        with Session(self.engine) as s:
            row = s.scalars(
                select(ArtifactVersion).where(
                    ArtifactVersion.kind == "index",
                    ArtifactVersion.name == plan.spec.name,
                    ArtifactVersion.content_hash == plan.content_hash,
                )
            ).first()
            return to_record(row) if row is not None else None

    def _next_version(self, name: str) -> int:
        with Session(self.engine) as s:
            current = s.scalar(
                select(func.max(ArtifactVersion.version)).where(
                    ArtifactVersion.kind == "index", ArtifactVersion.name == name
                )
            )
        return int(current or 0) + 1

    def _register(
        self, plan: BuildPlan, actor: str, stats: dict[str, Any], version: int
    ) -> tuple[VersionRecord, bool]:
        source = source_info(self.project_dir, plan.artifact, plan.manifest, self.engine)

        def work(session: Session) -> tuple[VersionRecord, bool]:
            record, created = register_version(
                session,
                kind="index",
                name=plan.spec.name,
                spec=plan.version_spec,
                content_hash=plan.content_hash,
                source=source,
                actor=actor,
            )
            if record.version != version:
                raise ConfigError(
                    f"another build registered index {plan.spec.name!r} version {version} meanwhile; build again"
                )
            bootstrapped = False
            if (
                created
                and record.version == 1
                and session.get(Alias, ("index", record.name, BOOTSTRAP_ALIAS)) is None
                and indexes_open(session)  # after the first start, production moves by promotion only
            ):
                set_alias(
                    session,
                    kind="index",
                    name=record.name,
                    alias=BOOTSTRAP_ALIAS,
                    version=1,
                    actor=actor,
                    action="alias.bootstrap",
                    reason="first version of a new index",
                )
                bootstrapped = True
            if build_of(session, record.name, record.version) is None:
                session.add(
                    IndexBuild(
                        name=record.name,
                        version=record.version,
                        content_hash=record.content_hash,
                        collection=collection_name(record.name, record.version, record.content_hash),
                        manifest=[f.as_dict() for f in plan.manifest],
                        stats=stats,
                        created_at=utcnow(),
                        created_by=actor,
                    )
                )
            return record, bootstrapped

        return audit.write_transaction(self.engine, work)


def _chunk_metadata(chunk: Chunk) -> dict[str, Any]:
    return {
        **chunk.metadata,
        "document_id": chunk.document_id,
        "source": chunk.source,
        "position": chunk.position,
    }


def source_info(
    project_dir: Path, art: ArtifactFile, files: list[SourceFile], engine: Engine | None = None
) -> SourceInfo:
    """The commit that last changed the index file; dirty when it, or a corpus file git tracks or
    could track, has uncommitted changes (git-ignored corpus files are outside git's say)."""
    repo = GitRepo(project_dir)
    if not repo.is_repo():
        return SourceInfo(path=art.path, dirty=True)
    commit = repo.last_commit(art.path)
    dirty = set(repo.dirty_paths(["."])) & ({art.path} | {f.path for f in files})
    if dirty or commit is None:
        return SourceInfo(
            path=art.path, commit=None, author=repo.user(), message="uncommitted changes", dirty=True
        )
    # everyone who committed to the index file or its sources' folders since the previous version
    folders = sorted({art.path} | {posixpath.dirname(f.path) or "." for f in files})
    head = repo.head()
    since = previous_commit(engine, "index", art.name) if engine is not None else None
    authors = tuple(repo.authors(folders, since=since, until=head))
    return SourceInfo(
        path=art.path, commit=commit.sha, author=commit.author, message=commit.message, authors=authors
    )


def bootstrap_indexes(builder: IndexBuilder, *, actor: str, working_tree: bool = False) -> list[BuildResult]:
    """First start: build each committed index file that has no version yet (its first version becomes
    production), once (gateway/registry/bootstrap.py). Indexes with a version, and every index after the
    first start, are governed: build them with `opsgate index build` and promote. An index whose sources
    match no files is left out with a warning (a project copied without its documents); an index file
    with uncommitted changes is left out with a warning too. Replicas starting together on one PostgreSQL
    database build one at a time: the first builds, the others find it built."""
    with bootstrap_lock(builder.engine):
        return _bootstrap_indexes(builder, actor=actor, working_tree=working_tree)


def _bootstrap_indexes(builder: IndexBuilder, *, actor: str, working_tree: bool) -> list[BuildResult]:
    if not indexes_open_now(builder.engine) or registry_open_now(builder.engine):
        return []  # already done, or nothing was registered yet (a project with no commit)
    not_committed = uncommitted(builder.project_dir, kinds.INDEX.folder, working_tree=working_tree)
    with Session(builder.engine) as s:
        known = set(s.scalars(select(ArtifactVersion.name).where(ArtifactVersion.kind == "index").distinct()))
    results, skipped = [], []
    for path in artifact_paths(builder.project_dir, "index"):
        rel = f"{kinds.INDEX.folder}/{path.name}"
        if path.stem in known:
            continue
        if not_committed is None or rel in not_committed:
            skipped.append(f"{rel}: not committed; not built")
            log.warning("index %s not built at start-up: %s is not committed", path.stem, rel)
            continue
        index_file(builder.project_dir, path.stem)  # an invalid file stops start-up, as for other kinds
        try:
            plan = builder.plan(path.stem)
        except ConfigError as exc:
            skipped.append(f"{rel}: {exc.message}")
            log.warning("index %s not built at start-up: %s", path.stem, exc.message)
            continue
        results.append(builder.build_plan(plan, actor=actor))
    close_index_bootstrap(builder.engine, actor=actor, built=[r.record.ref for r in results], skipped=skipped)
    return results
