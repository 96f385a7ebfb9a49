"""The chroma side of an index: one collection per index version, kept after newer builds.

Embedded default: a PersistentClient under `<data dir>/chroma`; production: a chroma server named by
`OPSGATE_CHROMA_URL` (an HttpClient). One client per process (chroma refuses two clients with
different settings on one path). Telemetry is off. opsgate always passes vectors itself; the
collection's embedding function is our own registered one, never chromadb's default (which would
download an ONNX model).

A build writes into a staging collection and renames it to the version's name once complete, so a
collection under a version's name is always whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

from gateway.errors import ConfigError, UpstreamUnavailable
from gateway.providers.minilm import MiniLMEmbedder

EF_NAME = "opsgate"
MAX_ADD = 5000  # chroma's max batch is 5,461
_registered = threading.Lock()


def collection_name(index: str, version: int, content_hash: str) -> str:
    """`opsgate-<index>-v<version>-<hash12>`: valid chroma names (3-512 of [a-zA-Z0-9._-], alnum ends)."""
    base = re.sub(r"\.{2,}", ".", index)
    name = f"opsgate-{base}-v{version}-{content_hash[:12]}"
    if len(name) > 500:
        name = f"opsgate-{hashlib.sha256(index.encode()).hexdigest()[:16]}-v{version}-{content_hash[:12]}"
    return name


def staging_name(index: str, content_hash: str) -> str:
    return f"opsgate-staging-{hashlib.sha256(index.encode()).hexdigest()[:12]}-{content_hash[:12]}"


def _embedding_function_class() -> type[Any]:
    """Our embedding function, registered with chromadb once per process (it stores the name)."""
    from chromadb.api.types import Documents, EmbeddingFunction, Embeddings
    from chromadb.utils.embedding_functions import known_embedding_functions, register_embedding_function

    with _registered:
        existing = known_embedding_functions.get(EF_NAME)
        if existing is not None:
            return existing

        class OpsgateEmbeddingFunction(EmbeddingFunction[Documents]):
            """Vectors of the index's own embedder. opsgate passes vectors explicitly; this is what chroma
            records for the collection, and it embeds locally if chroma ever asks."""

            def __init__(self, embedder: dict[str, Any], minilm: MiniLMEmbedder | None = None) -> None:
                self.embedder = embedder
                self.minilm = minilm

            def __call__(self, input: Documents) -> Embeddings:
                if self.embedder.get("type") != "local":
                    raise ConfigError(
                        f"this collection's vectors come from {self.embedder}; opsgate passes them itself"
                    )
                if self.minilm is None:
                    self.minilm = MiniLMEmbedder()
                return list(self.minilm.encode(list(input)))

            @staticmethod
            def name() -> str:
                return EF_NAME

            def get_config(self) -> dict[str, Any]:
                return {"embedder": self.embedder}

            @staticmethod
            def build_from_config(config: dict[str, Any]) -> OpsgateEmbeddingFunction:
                return OpsgateEmbeddingFunction(dict(config.get("embedder") or {}))

            def default_space(self) -> Any:
                return "cosine"

        register_embedding_function(OpsgateEmbeddingFunction)  # type: ignore[no-untyped-call]
        return OpsgateEmbeddingFunction


class ChromaStore:
    def __init__(self, *, path: Path, url: str | None = None, minilm: MiniLMEmbedder | None = None) -> None:
        self.path = path
        self.url = url
        self.minilm = minilm
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def where(self) -> str:
        return self.url or str(self.path)

    def client(self) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._connect()
        return self._client

    def _connect(self) -> Any:
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        settings = ChromaSettings(anonymized_telemetry=False)
        if not self.url:
            self.path.mkdir(parents=True, exist_ok=True)
            return chromadb.PersistentClient(path=str(self.path), settings=settings)
        parsed = urlparse(self.url if "://" in self.url else f"http://{self.url}")
        if not parsed.hostname:
            raise ConfigError(f"OPSGATE_CHROMA_URL {self.url!r} is not a URL like http://127.0.0.1:8000")
        try:
            return chromadb.HttpClient(
                host=parsed.hostname,
                port=parsed.port or (443 if parsed.scheme == "https" else 8000),
                ssl=parsed.scheme == "https",
                settings=settings,
            )
        except (ValueError, ConnectionError) as exc:
            raise UpstreamUnavailable(
                f"the chroma server at {self.url} cannot be reached ({exc}); start it or fix OPSGATE_CHROMA_URL",
                code="index_store_unavailable",
            ) from exc

    def embedding_function(self, embedder: dict[str, Any]) -> Any:
        return _embedding_function_class()(embedder, self.minilm)

    def get(self, name: str, embedder: dict[str, Any]) -> Any | None:
        """A complete collection by name (a `LiveCollection`), or None. An unreachable server is a 503."""
        collection = self._lookup(name, embedder)
        return LiveCollection(self, name, embedder, collection) if collection is not None else None

    def _lookup(self, name: str, embedder: dict[str, Any]) -> Any | None:
        from chromadb.errors import NotFoundError

        try:
            collection = self.client().get_collection(
                name, embedding_function=self.embedding_function(embedder)
            )
        except (NotFoundError, ValueError):
            return None
        except httpx.HTTPError as exc:
            raise self.unreachable(exc) from exc
        return collection if (collection.metadata or {}).get("opsgate_complete") else None

    def unreachable(self, exc: Exception) -> UpstreamUnavailable:
        return UpstreamUnavailable(
            f"the chroma server at {self.where} did not answer ({type(exc).__name__}: {exc}); indexed prompts"
            " answer 503 until it is back (check `chroma run` and OPSGATE_CHROMA_URL)",
            code="index_store_unavailable",
        )

    def create_staging(self, name: str, embedder: dict[str, Any], distance: str) -> Any:
        self.delete(name)
        return self.client().create_collection(
            name,
            embedding_function=self.embedding_function(embedder),
            configuration={"hnsw": {"space": distance}},
            metadata={"opsgate_complete": False},
        )

    def publish(self, collection: Any, name: str, metadata: dict[str, Any], embedder: dict[str, Any]) -> None:
        """Rename a finished staging collection to its version's name and mark it complete.

        A complete collection already under that name with the same content hash was published by another
        build of the same content (another host): it stays, since running gateways may be reading it, and
        this staging copy is dropped."""
        current = self._lookup(name, embedder)
        if current is not None and (current.metadata or {}).get("opsgate_hash") == metadata.get(
            "opsgate_hash"
        ):
            self.delete(collection.name)
            return
        self.delete(name)
        collection.modify(name=name, metadata={**metadata, "opsgate_complete": True})

    def delete(self, name: str) -> None:
        from chromadb.errors import NotFoundError

        with contextlib.suppress(NotFoundError, ValueError):
            self.client().delete_collection(name)

    def names(self) -> list[str]:
        return sorted(c.name for c in self.client().list_collections())


class LiveCollection:
    """A collection opened by name that stays bound to the name, not to chroma's id for it.

    A gateway opens each index version once and keeps it. If the collection is later re-created under the
    same name (`opsgate index build` restoring a version after a chroma server lost its data), the id the
    gateway holds no longer exists: on chroma's NotFoundError the name is looked up again, once, so
    replicas heal without a restart. Other attributes are the underlying collection's."""

    def __init__(self, store: ChromaStore, name: str, embedder: dict[str, Any], collection: Any) -> None:
        self._store = store
        self._embedder = embedder
        self._collection = collection
        self.name = name

    def query(self, **kw: Any) -> Any:
        return self._call("query", kw)

    def get(self, **kw: Any) -> Any:
        return self._call("get", kw)

    def count(self) -> int:
        return int(self._call("count", {}))

    def _call(self, method: str, kw: dict[str, Any]) -> Any:
        from chromadb.errors import NotFoundError

        try:
            return getattr(self._collection, method)(**kw)
        except NotFoundError:
            fresh = self._store._lookup(self.name, self._embedder)
            if fresh is None:
                raise
            self._collection = fresh
            return getattr(fresh, method)(**kw)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._collection, attr)


def add_batches(collection: Any, ids: list[str], vectors: Any, texts: list[str], metas: list[Any]) -> None:
    for start in range(0, len(ids), MAX_ADD):
        end = start + MAX_ADD
        collection.add(
            ids=ids[start:end],
            embeddings=vectors[start:end],
            documents=texts[start:end],
            metadatas=metas[start:end],
        )


def make_store(data_dir: Path, chroma_url: str | None, minilm: MiniLMEmbedder | None) -> ChromaStore:
    """The configured index store: a chroma server when OPSGATE_CHROMA_URL is set, else `<data>/chroma`."""
    return ChromaStore(path=data_dir / "chroma", url=chroma_url or None, minilm=minilm)
