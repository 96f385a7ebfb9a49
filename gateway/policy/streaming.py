"""Output checks on a streamed answer, across chunk boundaries.

A value can arrive split over chunks ("jane.do" + "e@example.com"), so each choice's text is buffered
and released only up to a safe cut: `holdback` characters before the end of the buffer (the longest hit
that may contain spaces, 64 by default), moved back to the start of the unbroken run of non-space
characters it falls in (an email has no spaces but may be long), and moved back again to the start of
any hit that crosses it. Everything before the cut is final: no hit can still grow into it. When the
choice finishes, the rest is released. Text is released (and scanned) in steps of 32 characters or
more, and a chunk whose text is all held back is not sent. Cost: the caller sees text ~64-96
characters (~16-24 tokens) later.

A `block` hit releases the text before it and ends the answer with finish_reason `content_filter`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.policy.base import Finding, Hit, PolicyCheck, Scanner, Verdict
from gateway.shapes import Json, chunk_stream

MAX_RUN = 256  # a run of non-space characters longer than this is cut anyway (emails are <= 254)
STEP = 32  # release (and scan) only once this much text is ready beyond the hold-back


@dataclass(slots=True)
class _Tally:
    redacted: int = 0
    flagged: int = 0
    blocked: int = 0
    kinds: set[str] = field(default_factory=set)

    def finding(self) -> Finding:
        verdict: Verdict = "allowed"
        count = self.redacted + self.flagged + self.blocked
        if self.blocked:
            verdict = "blocked"
        elif self.redacted:
            verdict = "redacted"
        elif self.flagged:
            verdict = "flagged"
        return Finding(verdict, ",".join(sorted(self.kinds)), count=count)


@dataclass(slots=True)
class _Bound:
    check: PolicyCheck[Any]
    scanner: Scanner
    tally: _Tally = field(default_factory=_Tally)


class GuardedStream:
    """The upstream's chunks after the guard (a `gateway.shapes.ChunkStream`). Each pull also takes every
    chunk the upstream already delivered, so `ready()` is exact even when the guard holds a chunk's text
    back whole: the SSE writer keeps sending what arrived together in one write. Closes the upstream
    stream when closed or stopped."""

    def __init__(self, guard: StreamGuard, first: Json, rest: AsyncIterator[Json]) -> None:
        self.guard = guard
        self.rest = chunk_stream(rest)
        self._first: Json | None = first
        self._queue: deque[Json] = deque()
        self._error: Exception | None = None  # raised once the chunks that came before it are sent
        self._ended = False

    def __aiter__(self) -> GuardedStream:
        return self

    async def __anext__(self) -> Json:
        while not self._queue:
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            if self._ended:
                raise StopAsyncIteration
            await self._pull()
        return self._queue.popleft()

    async def _pull(self) -> None:
        """The next chunk (waiting for it if it has not come) and every chunk already here after it."""
        chunk, self._first = self._first, None
        if chunk is None and not self.guard.stopped:
            chunk = await anext(self.rest, None)
        while True:
            if chunk is None or self.guard.stopped:
                tail = None if self.guard.stopped else self.guard.flush_all()
                if tail is not None:
                    self._queue.append(tail)
                await self.aclose()
                return
            processed = self.guard.process(chunk)
            if not _held_back_whole(processed):  # a chunk whose text is all held back is not sent
                self._queue.append(processed)
            if not self.rest.ready():
                return
            try:
                chunk = await anext(self.rest, None)
            except Exception as exc:  # noqa: BLE001 - re-raised once the chunks before it are sent
                self._error = exc
                return

    def ready(self) -> bool:
        return bool(self._queue) or self._first is not None or self._ended

    async def aclose(self) -> None:
        if self._ended:
            return
        self._ended = True
        try:
            await self.rest.aclose()
        finally:
            self.guard.done()


def _held_back_whole(chunk: Json) -> bool:
    choices = chunk.get("choices")
    if not choices or chunk.get("usage"):
        return False
    for choice in choices:
        if not isinstance(choice, dict) or choice.get("finish_reason") is not None or choice.get("logprobs"):
            return False
        delta = choice.get("delta")
        if not isinstance(delta, dict) or delta.keys() != {"content"} or delta["content"]:
            return False
    return True


def safe_cut(buffer: str, hits: list[tuple[Hit, _Bound]], holdback: int) -> int:
    cut = len(buffer) - holdback
    if cut <= 0:
        return 0
    floor = max(0, cut - MAX_RUN)
    while cut > floor and not buffer[cut - 1].isspace() and not buffer[cut].isspace():
        cut -= 1
    for hit, _ in hits:
        if hit.start < cut < hit.end:
            cut = hit.start
    return cut


class StreamGuard:
    """Wraps an upstream chunk stream; `findings()` tells, per check, what was done once it is over."""

    def __init__(
        self, bound: list[tuple[PolicyCheck[Any], Scanner]], on_done: Callable[[StreamGuard], None]
    ) -> None:
        self.bound = [_Bound(check, scanner) for check, scanner in bound]
        self.holdback = max(b.scanner.holdback for b in self.bound)
        self.buffers: dict[int, str] = {}
        self.delivered: dict[int, list[str]] = {}
        self.stopped = False
        self._on_done = on_done
        self._done = False

    def findings(self) -> list[tuple[PolicyCheck[Any], Finding]]:
        return [(b.check, b.tally.finding()) for b in self.bound]

    def text(self, index: int = 0) -> str:
        return "".join(self.delivered.get(index, ()))

    def wrap(self, first: Json, rest: AsyncIterator[Json]) -> GuardedStream:
        return GuardedStream(self, first, rest)

    def done(self) -> None:
        if not self._done:
            self._done = True
            self._on_done(self)

    def process(self, chunk: Json) -> Json:
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            index = int(choice.get("index") or 0)
            delta = choice.get("delta")
            content = delta.get("content") if isinstance(delta, dict) else None
            finishing = choice.get("finish_reason") is not None
            if isinstance(content, str) or finishing:
                self.buffers[index] = self.buffers.get(index, "") + (
                    content if isinstance(content, str) else ""
                )
                released, blocked = self.release(index, final=finishing)
                if isinstance(delta, dict):
                    if content is not None or released:
                        delta["content"] = released
                elif released:
                    choice["delta"] = {"content": released}
                if blocked:
                    choice["finish_reason"] = "content_filter"
                    self.stopped = True
        return chunk

    def flush_all(self) -> Json | None:
        """The stream ended without a finish chunk: release what is held as one last chunk."""
        pending = {i: b for i, b in self.buffers.items() if b}
        if not pending:
            return None
        choices = []
        for index in pending:
            released, blocked = self.release(index, final=True)
            choices.append(
                {
                    "index": index,
                    "delta": {"content": released},
                    "finish_reason": "content_filter" if blocked else None,
                }
            )
        return {"object": "chat.completion.chunk", "choices": choices}

    def release(self, index: int, *, final: bool) -> tuple[str, bool]:
        """The text of choice `index` that is safe to send now, and whether a block hit stopped it."""
        buffer = self.buffers.get(index, "")
        if not final and len(buffer) < self.holdback + STEP:
            self.delivered.setdefault(index, [])
            return "", False
        hits = self._hits(buffer)
        cut = len(buffer) if final else safe_cut(buffer, hits, self.holdback)
        out: list[str] = []
        pos = 0
        blocked = False
        for hit, bound in hits:
            if hit.end > cut:
                break
            if bound.scanner.action == "block":
                bound.tally.blocked += 1
                bound.tally.kinds.add(hit.kind)
                cut, blocked = hit.start, True
                break
            bound.tally.kinds.add(hit.kind)
            if bound.scanner.action == "redact":
                bound.tally.redacted += 1
                out.append(buffer[pos : hit.start])
                out.append(bound.scanner.replacement(hit))
                pos = hit.end
            else:
                bound.tally.flagged += 1
        out.append(buffer[pos:cut])
        self.buffers[index] = "" if blocked else buffer[cut:]
        released = "".join(out)
        self.delivered.setdefault(index, []).append(released)
        return released, blocked

    def _hits(self, text: str) -> list[tuple[Hit, _Bound]]:
        found: list[tuple[Hit, _Bound]] = []
        for bound in self.bound:
            for hit in bound.scanner.find(text):
                if not any(h.start < hit.end and hit.start < h.end for h, _ in found):
                    found.append((hit, bound))
        found.sort(key=lambda pair: pair[0].start)
        return found
