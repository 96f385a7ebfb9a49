"""Shapes shared across the request path, named once (the lowest layer: imports nothing of opsgate).

Json            a JSON object as parsed by orjson
ArtifactRef     one artifact version in lineage: typed, and its string form is the header form
ChunkStream     what every stream of chat chunks implements (adapters, routers, guards)
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any, Protocol, cast

Json = dict[str, Any]

_HEADER_FORM = re.compile(r"^(?P<kind>[a-z]+):(?P<name>[^@#\s]+)@(?P<version>\d+)#(?P<hash>[0-9a-f]{1,64})$")


class ArtifactRef(str):
    """`kind:name@version#hash12`: the version of an artifact that served (part of) a request.

    It is a `str` whose value is the form clients see in `x-opsgate-versions` and the request log, so it
    joins, compares and serialises as that string; code reads its typed fields instead of taking the
    string apart. `content_hash` is the full hash when built from a record, the 12-hex prefix when
    parsed back from a header or a log row."""

    kind: str
    name: str
    version: int
    content_hash: str

    def __new__(cls, kind: str, name: str, version: int, content_hash: str) -> ArtifactRef:
        ref = super().__new__(cls, f"{kind}:{name}@{version}#{content_hash[:12]}")
        ref.kind, ref.name, ref.version, ref.content_hash = kind, name, version, content_hash
        return ref

    def __reduce__(self) -> tuple[Any, ...]:
        return (ArtifactRef, (self.kind, self.name, self.version, self.content_hash))

    @property
    def pinned(self) -> str:
        """`kind:name@version`: what a caller sends to get exactly this version (also the metric label)."""
        return f"{self.kind}:{self.name}@{self.version}"

    @classmethod
    def parse(cls, text: str) -> ArtifactRef | None:
        """The header form back into a ref; None for anything else."""
        found = _HEADER_FORM.match(text)
        if found is None:
            return None
        return cls(found["kind"], found["name"], int(found["version"]), found["hash"])


class ChunkStream(Protocol):
    """Chat completion chunks, one at a time. `ready()` says whether the next step (a chunk or the end)
    is available without waiting, so the SSE writer sends what arrived together in one write and
    flushes only before it must wait. `aclose()` releases the upstream connection."""

    def __aiter__(self) -> ChunkStream: ...

    async def __anext__(self) -> Json: ...

    def ready(self) -> bool: ...

    async def aclose(self) -> None: ...


class _Plain:
    """A plain async iterator of chunks as a ChunkStream: never ready ahead of time (flush each chunk)."""

    def __init__(self, inner: AsyncIterator[Json]) -> None:
        self.inner = inner

    def __aiter__(self) -> _Plain:
        return self

    async def __anext__(self) -> Json:
        return await anext(self.inner)

    def ready(self) -> bool:
        return False

    async def aclose(self) -> None:
        aclose = getattr(self.inner, "aclose", None)
        if aclose is not None:
            await aclose()


def chunk_stream(stream: AsyncIterator[Json]) -> ChunkStream:
    """Any async iterator of chunks as a ChunkStream (itself when it already is one)."""
    if callable(getattr(stream, "ready", None)) and callable(getattr(stream, "aclose", None)):
        return cast(ChunkStream, stream)
    return _Plain(stream)
