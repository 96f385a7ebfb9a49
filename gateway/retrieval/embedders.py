"""Embedders of an index: the packaged MiniLM in process, or an embedding router served by opsgate.

An index version records which embedder made its vectors (`identity`, part of its content hash);
its queries are embedded the same way. A router embedder is pinned to the router version resolved
at build time (`minilm@3`), so a later change of the router's alias never mixes vector spaces.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from gateway.errors import ConfigError, UpstreamError
from gateway.providers.minilm import DIMENSIONS, MODEL_NAME, MiniLMEmbedder
from gateway.registry.refs import DEFAULT_ALIAS
from gateway.registry.store import VersionRecord
from gateway.retrieval.spec import LocalEmbedder, RouterEmbedder

Vectors = npt.NDArray[np.float32]


class Vectorizer(Protocol):
    def encode(self, texts: list[str]) -> Vectors: ...
    def close(self) -> None: ...


def local_identity(spec: LocalEmbedder) -> dict[str, Any]:
    return {"type": "local", "model": MODEL_NAME, "dimensions": DIMENSIONS, "normalized": True}


def router_identity(spec: RouterEmbedder, record: VersionRecord) -> dict[str, Any]:
    return {"type": "router", "router": f"{record.name}@{record.version}", "ref": record.ref}


class LocalVectorizer:
    def __init__(self, minilm: MiniLMEmbedder, *, group: int = 512) -> None:
        self.minilm = minilm
        self.group = group

    def encode(self, texts: list[str]) -> Vectors:
        return self.minilm.encode(texts)

    def close(self) -> None:
        return None


def vectors_from_response(data: dict[str, Any], expected: int, where: str) -> Vectors:
    rows = sorted(data.get("data") or [], key=lambda d: int(d.get("index", 0)))
    if len(rows) != expected or not all(isinstance(r.get("embedding"), list) for r in rows):
        raise UpstreamError(
            f"{where} returned {len(rows)} float embeddings for {expected} inputs; an index needs one"
            " float vector per chunk (encoding_format float)",
            code="bad_embeddings",
        )
    vectors = np.asarray([r["embedding"] for r in rows], dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True).astype(np.float32)
    return np.asarray(vectors / np.where(norms == 0, 1, norms), dtype=np.float32)


class RouterVectorizer:
    """Sync facade over an embedding router, for builds (run from the CLI, or in a worker thread of the
    gateway): one private event loop for the whole build, so pooled upstream sessions stay usable."""

    def __init__(self, router: Any, adapters: Any, batch_size: int) -> None:
        self.router = router
        self.adapters = adapters
        self.batch_size = batch_size
        self._loop = asyncio.new_event_loop()

    async def aencode(self, texts: list[str]) -> Vectors:
        parts = []
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start : start + self.batch_size]
            data, _ = await self.router.embed({"model": self.router.name, "input": batch})
            parts.append(vectors_from_response(data, len(batch), f"router {self.router.ref}"))
        return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)

    def encode(self, texts: list[str]) -> Vectors:
        return self._loop.run_until_complete(self.aencode(texts))

    def close(self) -> None:
        self._loop.run_until_complete(self.adapters.close())
        self._loop.close()


def router_record(
    records: dict[tuple[str, int], VersionRecord], aliases: dict[str, int], spec: RouterEmbedder
) -> VersionRecord:
    """The router version a build pins: `name@version`, `name@alias`, or `name` (production)."""
    name, _, selector = spec.router.partition("@")
    selector = selector or DEFAULT_ALIAS
    version = int(selector) if selector.isdigit() else aliases.get(selector)
    record = records.get((name, version)) if version is not None else None
    if record is None:
        raise ConfigError(
            f"embedder router {spec.router!r} does not resolve to a registered router version"
            f" (aliases: {aliases or 'none'}); run `opsgate sync` first"
        )
    if record.spec.get("kind") != "embedding":
        raise ConfigError(f"router {record.name!r} serves chat, not embeddings; name an embedding router")
    return record
