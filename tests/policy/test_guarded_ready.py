"""The output guard is a ChunkStream like any other: `ready()` is exact, so the SSE writer still sends the
events an upstream delivered together in one write when a guard holds text back (it used to look for a
method named `buffered`, so every guarded stream was flushed event by event)."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from gateway.policy.checks.pii import Pii, PiiConfig
from gateway.policy.streaming import StreamGuard

Json = dict[str, Any]


class Delivered:
    """An upstream stream whose chunks all arrived in one network read (all ready at once)."""

    def __init__(self, chunks: list[Json]) -> None:
        self.chunks = deque(chunks)
        self.closed = False

    def __aiter__(self) -> Delivered:
        return self

    async def __anext__(self) -> Json:
        if not self.chunks:
            raise StopAsyncIteration
        return self.chunks.popleft()

    def ready(self) -> bool:
        return True  # the rest, or the end, is already here

    async def aclose(self) -> None:
        self.closed = True


def chunk(text: str, finish: str | None = None) -> Json:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}


def guard() -> StreamGuard:
    check = Pii(PiiConfig(type="pii", mode="redact"), "r")  # type: ignore[arg-type]
    scanner = check.scanner(None)  # type: ignore[arg-type]
    assert scanner is not None
    return StreamGuard([(check, scanner)], lambda _: None)


def test_a_guarded_stream_is_ready_while_the_upstream_delivered_more() -> None:
    words = [
        chunk(w + " ")
        for w in ["write", "to", "jane.doe@example.org", "before", "the", "end", "of", "the", "week"]
    ]
    upstream = Delivered([*words[1:], chunk("", "stop")])

    async def go() -> tuple[list[bool], str]:
        stream = guard().wrap(words[0], upstream)
        readiness, text = [], []
        async for c in stream:
            text.append(c["choices"][0]["delta"].get("content") or "")
            readiness.append(stream.ready())
        return readiness, "".join(text)

    readiness, text = asyncio.run(go())
    assert text == "write to [REDACTED:EMAIL] before the end of the week "
    assert all(readiness)  # never a flush in the middle: one write for what came together
    assert upstream.closed


def test_an_upstream_error_comes_after_the_chunks_before_it() -> None:
    class Breaks(Delivered):
        async def __anext__(self) -> Json:
            if not self.chunks:
                raise ConnectionError("cut")
            return self.chunks.popleft()

    first = chunk("x" * 200)
    upstream = Breaks([chunk("y" * 200)])

    async def go() -> tuple[str, str]:
        got = []
        try:
            async for c in guard().wrap(first, upstream):
                got.append(c["choices"][0]["delta"].get("content") or "")
        except ConnectionError as exc:
            return "".join(got), str(exc)
        return "".join(got), ""

    text, error = asyncio.run(go())
    assert error == "cut" and text.startswith("x")  # released text reached the caller before the error
