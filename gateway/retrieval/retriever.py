"""Retrieval on the request path: a RAG prompt's index version -> the chunks for its template.

`IndexLibrary` keeps the index versions it has opened (versions are immutable, so an entry never goes
stale; a rolled-back version is still open, so rollback costs nothing). `IndexRetriever` resolves a
prompt's `retrieval.index` through the catalog (memory only, no database), builds the query, embeds it
the way that version was built and searches. What it found is a `Retrieval`: typed hits of which the
template's context, the answer's citations and the log entry are views.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine

from gateway.errors import InvalidRequest, NotFound, UpstreamUnavailable
from gateway.prompts.render import render_template
from gateway.prompts.spec import PromptSpec, RetrievalSpec
from gateway.providers.minilm import MiniLMEmbedder
from gateway.registry.refs import parse_ref
from gateway.registry.store import VersionRecord
from gateway.retrieval.build import IndexBuilder, lexical_dir
from gateway.retrieval.embedders import vectors_from_response
from gateway.retrieval.lexical import LexicalIndex
from gateway.retrieval.search import DEFAULT_MODE, Hit, IndexReader, Mode
from gateway.retrieval.spec import IndexSpec, RouterEmbedder
from gateway.retrieval.store import ChromaStore, collection_name
from gateway.shapes import ArtifactRef, Json
from gateway.snapshot import Catalog, Snapshot
from gateway.tokens_cost import message_text

log = logging.getLogger("opsgate.retrieval")
PAGE = 5000


def embedder_config(spec: IndexSpec) -> dict[str, Any]:
    return {"type": spec.embedder.type}


class IndexLibrary:
    def __init__(self, store: ChromaStore, data_dir: Path, minilm: MiniLMEmbedder) -> None:
        self.store = store
        self.data_dir = data_dir
        self.minilm = minilm
        self._readers: dict[tuple[str, int, str], IndexReader] = {}
        self._lock = threading.Lock()

    def reader(self, record: VersionRecord, spec: IndexSpec | None = None) -> IndexReader:
        key = (record.name, record.version, record.content_hash)
        reader = self._readers.get(key)
        if reader is not None:
            return reader
        with self._lock:
            reader = self._readers.get(key)
            if reader is None:
                reader = self._open(record, spec or IndexSpec.model_validate(record.spec))
                self._readers[key] = reader
        return reader

    def _open(self, record: VersionRecord, spec: IndexSpec) -> IndexReader:
        name = collection_name(record.name, record.version, record.content_hash)
        collection = self.store.get(name, embedder_config(spec))
        if collection is None:
            raise UpstreamUnavailable(
                f"{record.ref} has no collection {name!r} in the index store ({self.store.where}); build it"
                f" with `opsgate index build {record.name}`",
                code="index_unavailable",
            )
        folder = lexical_dir(self.data_dir, name)
        return IndexReader(record.ref, collection, spec.distance, lambda: self._lexical(collection, folder))

    def _lexical(self, collection: Any, folder: Path) -> LexicalIndex:
        index = LexicalIndex.load(folder)
        if index is not None:
            return index
        log.info("rebuilding the lexical index of %s from its chunks in chroma", collection.name)
        ids: list[str] = []
        texts: list[str] = []
        total = collection.count()
        for offset in range(0, total, PAGE):
            page = collection.get(include=["documents"], limit=PAGE, offset=offset)
            ids.extend(page["ids"])
            texts.extend(page["documents"] or [])
        index = LexicalIndex.build(ids, texts)
        index.save(folder)
        return index

    def builder(self, engine: Engine, project_dir: Path) -> IndexBuilder:
        return IndexBuilder(engine, project_dir, self.store, self.data_dir, self.minilm)

    def warm(self, record: VersionRecord, *, vectors: bool) -> None:
        """Open a version and load its lexical index (and the query embedder when a prompt searches by
        vector), so its first query is fast."""
        reader = self.reader(record)
        reader.lexical_index()
        if vectors and IndexSpec.model_validate(record.spec).embedder.type == "local":
            self.minilm.encode(["warm up"])


def last_user_message(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return message_text(message)
    return ""


@dataclass(slots=True)
class Retrieval:
    """What one retrieval found: the index version, how it searched, and the hits, best first."""

    index: ArtifactRef
    mode: Mode
    top_k: int
    query: str
    hits: list[Hit]

    def context(self) -> list[Json]:
        """What a prompt template sees (`context`), one dict per chunk."""
        return [h.context(self.index) for h in self.hits]

    def citations(self, *, include_text: bool) -> list[Json]:
        """The `citations` of a RAG answer; chunk text only when the caller opted in."""
        out: list[Json] = []
        for h in self.hits:
            cited: Json = {
                "document_id": h.document_id,
                "chunk_id": h.id,
                "source": h.source,
                "score": round(h.score, 6),
                "index": self.index,
            }
            if include_text:
                cited["text"] = h.text
            out.append(cited)
        return out

    def log_entry(self) -> Json:
        """What the request log keeps: which chunks, with their scores (never their text)."""
        chunks = [{"id": h.id, "document_id": h.document_id, "score": round(h.score, 6)} for h in self.hits]
        return {"index": self.index, "mode": self.mode, "top_k": self.top_k, "chunks": chunks}

    def texts(self) -> list[str]:
        return [h.text for h in self.hits]

    def keep(self, context: list[Json]) -> None:
        """After the context screen: only the chunks it kept, with their text as it left them (redacted)."""
        by_id = {h.id: h for h in self.hits}
        self.hits = [
            replace(by_id[c["id"]], text=c["text"]) if isinstance(c.get("text"), str) else by_id[c["id"]]
            for c in context
            if c.get("id") in by_id
        ]


class IndexRetriever:
    def __init__(self, catalog: Catalog, library: IndexLibrary, *, default_mode: Mode = DEFAULT_MODE) -> None:
        self.catalog = catalog
        self.library = library
        self.default_mode = default_mode
        self._warming: set[tuple[str, int, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def resolve(
        self, index: str, prompt: str, resolve: Callable[[str, str, str | None], VersionRecord] | None = None
    ) -> VersionRecord:
        """The index version a prompt names (`name`, `name@alias`, `name@7`): memory only. `resolve`
        (kind, name, selector) looks it up instead of the catalog (the request flow's, which serves an
        alias under a rollout by the caller's arm)."""
        ref = parse_ref(index, default_kind="index", param="retrieval.index")
        try:
            if resolve is not None:
                return resolve("index", ref.name, ref.selector)
            return self.catalog.resolve("index", ref.name, ref.selector)
        except NotFound as exc:
            raise NotFound(
                f"prompt {prompt!r} retrieves from {index!r}: {exc.message}; build it with"
                f" `opsgate index build {ref.name}`",
                code="index_not_found",
            ) from exc

    async def retrieve(self, record: VersionRecord, retrieval: RetrievalSpec, query: str) -> Retrieval:
        """Search one index version the way the prompt's `retrieval` block says."""
        index_spec: IndexSpec = self.catalog.spec_for(record, IndexSpec)
        mode: Mode = retrieval.mode or self.default_mode
        hits = await self.search(record, index_spec, query, retrieval.top_k, mode)
        if retrieval.min_score is not None:
            hits = [h for h in hits if h.score >= retrieval.min_score]
        return Retrieval(record.ref, mode, retrieval.top_k, query, hits)

    @staticmethod
    def query(
        spec: PromptSpec, retrieval: RetrievalSpec, variables: dict[str, Any], messages: list[Any]
    ) -> str:
        question = last_user_message(messages)
        if retrieval.query is not None:
            values = {**variables, "messages": messages, "question": question}
            question = render_template(retrieval.query, values, where=f"prompt {spec.name!r} retrieval.query")
        if not question.strip():
            raise InvalidRequest(
                f"prompt {spec.name!r} retrieves with the last user message as its query: send a user message",
                param="messages",
                code="missing_query",
            )
        return question

    async def search(
        self, record: VersionRecord, spec: IndexSpec, query: str, top_k: int, mode: Mode
    ) -> list[Hit]:
        if isinstance(spec.embedder, RouterEmbedder) and mode != "lexical":
            vector = await self._router_vector(spec.embedder, query)
            return await asyncio.to_thread(self._search, record, spec, query, vector, top_k, mode)
        return await asyncio.to_thread(self._search, record, spec, query, None, top_k, mode)

    def _search(
        self, record: VersionRecord, spec: IndexSpec, query: str, vector: Any, top_k: int, mode: Mode
    ) -> list[Hit]:
        from chromadb.errors import ChromaError

        reader = self.library.reader(record, spec)
        if vector is None and mode != "lexical":
            vector = self.library.minilm.encode([query])[0]
        try:
            return reader.search(query, vector, top_k, mode)
        except (ChromaError, httpx.HTTPError, OSError) as exc:
            raise UpstreamUnavailable(
                f"the index store ({self.library.store.where}) failed to search {record.ref}: {exc}",
                code="index_store_unavailable",
            ) from exc

    async def _router_vector(self, embedder: RouterEmbedder, query: str) -> Any:
        ref = parse_ref(embedder.router, default_kind="router", param="embedder.router")
        router = self.catalog.router_for(self.catalog.resolve("router", ref.name, ref.selector))
        data, _ = await router.embed({"model": router.name, "input": [query]})
        return vectors_from_response(data, 1, f"router {router.ref}")[0]

    # -- cache refresh ---------------------------------------------------------------------------------

    def on_snapshot(self, snapshot: Snapshot) -> None:
        """Catalog listener: open (in the background) every index version an alias points at."""
        vectors = self._vector_search_used(snapshot)
        for (kind, name), aliases in snapshot.aliases.items():
            if kind != "index":
                continue
            for version in set(aliases.values()):
                record = snapshot.records.get((kind, name, version))
                if record is None:
                    continue
                key = (record.name, record.version, record.content_hash)
                if key in self._warming:
                    continue
                self._warming.add(key)
                task = asyncio.get_running_loop().create_task(self._warm(record, vectors))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _vector_search_used(self, snapshot: Snapshot) -> bool:
        """Whether a served prompt retrieves in dense or hybrid mode (then the query model is worth loading)."""
        for (kind, name), aliases in snapshot.aliases.items():
            if kind != "prompt":
                continue
            for version in set(aliases.values()):
                record = snapshot.records.get((kind, name, version))
                spec = self.catalog.prompt_spec(record) if record is not None else None
                if (
                    spec is not None
                    and spec.retrieval
                    and (spec.retrieval.mode or self.default_mode) != "lexical"
                ):
                    return True
        return False

    async def _warm(self, record: VersionRecord, vectors: bool) -> None:
        try:
            await asyncio.to_thread(self.library.warm, record, vectors=vectors)
        except Exception as exc:  # noqa: BLE001 - warming is an optimisation; the request path reports it
            log.warning("could not open %s ahead of requests: %s", record.ref, exc)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
