"""The SSE writer: a chat stream as the bytes the client reads, and the call's end when it is over.

Events the upstream delivered together go out in one write, flushed before the writer must wait for
more (`ChunkStream.ready()`). A stream ends with `data: [DONE]`, or, when it is cut (the upstream broke
off, or the gateway is shutting down), with a chunk whose finish_reason is "error" and an error event.
Whatever happens, the stream's end writes the call's one log row (through `ChatStream.end`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any, Protocol

import orjson

from gateway.errors import ClientTooSlow, OpsgateError, StreamCut, UpstreamError
from gateway.flow.call import Call
from gateway.shapes import ChunkStream, Json
from gateway.tokens_cost import usage_problem

log = logging.getLogger("opsgate.stream")
# (call, status, error, usage, answer text) -> None: accounting and the log row
EndHook = Callable[[Call, int, OpsgateError | None, dict[str, Any] | None, str], None]
# (answer text) -> usage counted by the gateway, when the upstream sent none and the client asked for it
UsageCounter = Callable[[str], dict[str, int]]


class StreamEncoder(Protocol):
    """How a stream's chunks become the bytes of one API surface (chat's own SSE, or a bridged API's
    events). `chunk` gets every chunk (usage-only ones too) and returns what to send for it (may be
    empty); `end` closes a whole stream (with the usage, counted by the gateway when the upstream sent
    none and `wants_usage`); `error` closes a cut one, after what was pending (`out`)."""

    wants_usage: bool

    def chunk(self, chunk: Json) -> bytes: ...

    def end(self, meta: Json, usage: dict[str, Any] | None, counted: bool) -> bytes: ...

    def error(self, out: list[bytes], meta: Json, error: OpsgateError) -> bytes: ...


class ChatEncoder:
    """Chat completions' SSE: chunks as sent (usage only when asked for), then `data: [DONE]`."""

    def __init__(self, include_usage: bool) -> None:
        self.wants_usage = include_usage

    def chunk(self, chunk: Json) -> bytes:
        if self.wants_usage or chunk.get("choices"):
            if not self.wants_usage and "usage" in chunk:
                chunk = {k: v for k, v in chunk.items() if k != "usage"}
            return b"data: " + orjson.dumps(chunk) + b"\n\n"
        return b""

    def end(self, meta: Json, usage: dict[str, Any] | None, counted: bool) -> bytes:
        if counted and usage is not None:  # the upstream sent none: the gateway's count, as its own chunk
            return b"data: " + orjson.dumps(_usage_chunk(meta, usage)) + b"\n\ndata: [DONE]\n\n"
        return b"data: [DONE]\n\n"

    def error(self, out: list[bytes], meta: Json, error: OpsgateError) -> bytes:
        return _error_events(out, meta, error)


class ChatStream:
    """An open chat stream: its first chunk and the rest (after output checks), not yet sent."""

    def __init__(
        self,
        call: Call,
        first: Json,
        rest: ChunkStream,
        *,
        include_usage: bool,
        count_usage: UsageCounter,
        end: EndHook,
    ) -> None:
        self.call = call
        call.streaming = True  # from here on this stream writes the call's log row
        self.first = first
        self.rest = rest
        self.include_usage = include_usage
        self._count_usage = count_usage
        self._end = end
        self._cut = False
        self._slow = False  # the client stopped reading and the server cut the answer
        self._task: asyncio.Task[Any] | None = None  # the writer's task while it waits for the upstream
        self.encoder: StreamEncoder = ChatEncoder(include_usage)  # a bridged API sets its own

    def cut(self) -> None:
        """End the stream now with an error event (the server is shutting down): at once if the writer
        is waiting for the upstream (its wait is cancelled), else at the next chunk."""
        self._cut = True
        if self._task is not None:
            self._task.cancel(msg=CUT)

    def too_slow(self) -> None:
        """The client did not read for `server.send_timeout_s`: the stream ends as the server's cut."""
        self._slow = True

    def _left(self) -> tuple[int, OpsgateError]:
        if self._slow:
            return 408, ClientTooSlow(
                "the client stopped reading the stream; it was cut after server.send_timeout_s"
            )
        return 499, OpsgateError("the client left during the stream", code="client_closed")

    async def sse(self) -> AsyncGenerator[bytes]:
        """SSE bytes for the client; ends with [DONE], or with an error event and no [DONE] when cut."""
        call, rest, encoder = self.call, self.rest, self.encoder
        pieces: list[str] = []
        usage: dict[str, Any] | None = None
        last_meta: Json = self.first
        status: int = 200
        error: OpsgateError | None = None
        first = self.first
        citations = call.citations()
        if citations is not None:
            first = {**first, "citations": citations}
        out: list[bytes] = []
        task = asyncio.current_task()  # the writer's: `cut` cancels it while it waits for the upstream
        try:
            chunk: Json | None = first
            while chunk is not None:
                if chunk.get("usage"):
                    problem = usage_problem(chunk["usage"])
                    if problem is None:
                        usage = chunk["usage"]
                    else:  # the answer itself is sound: the gateway counts it, and the row says why
                        call.extra["usage_error"] = (
                            f"the upstream streamed {problem}, which is not a token count"
                        )
                        chunk = {k: v for k, v in chunk.items() if k != "usage"}
                for choice in chunk.get("choices") or ():
                    delta = choice.get("delta") or {}
                    if isinstance(delta.get("content"), str):
                        pieces.append(delta["content"])
                last_meta = chunk
                piece = encoder.chunk(chunk)
                if piece:
                    out.append(piece)
                if out and not rest.ready():
                    yield b"".join(out)
                    out.clear()
                if self._cut:
                    raise _cut_error()
                self._task = task  # (inline: this runs once per chunk)
                try:
                    chunk = await anext(rest, None)
                finally:
                    self._task = None
            counted = usage is None
            if counted:  # the upstream sent none: counted off the event loop (a long answer takes seconds)
                usage = await asyncio.to_thread(self._count_usage, "".join(pieces))
            yield b"".join([*out, encoder.end(last_meta, usage, counted and encoder.wants_usage)])
        except (UpstreamError, StreamCut) as exc:
            status, error = exc.status, exc
            yield encoder.error(out, last_meta, exc)
        except asyncio.CancelledError:
            if not self._cut:  # the client went away (or stopped reading)
                status, error = self._left()
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]  # our own cut, not the client's
            status, error = 503, _cut_error()
            yield encoder.error([], last_meta, error)
        except GeneratorExit:  # the response was closed under us (the client went away or stopped reading)
            status, error = self._left()
            raise
        except Exception as exc:  # a bug: the client gets an error event, the row says so, the log has it
            log.exception("stream of request %s failed", call.request_id)
            status = 500
            error = OpsgateError(f"internal error ({type(exc).__name__}); quote request id {call.request_id}")
            yield encoder.error(out, last_meta, error)
        finally:
            await rest.aclose()
            self._end(call, status, error, usage, "".join(pieces))

    async def abandon(self) -> None:
        """The client left before the first byte was sent: close the upstream, log the request."""
        if self.call.finished:
            return
        await self.rest.aclose()
        error = OpsgateError("the client left before the stream started", code="client_closed")
        self._end(self.call, 499, error, None, "")


CUT = "opsgate: stream cut at shutdown"


def _cut_error() -> StreamCut:
    return StreamCut(
        "the gateway is shutting down and ended this stream before it finished; retry the request"
    )


def _error_events(out: list[bytes], meta: Json, error: OpsgateError) -> bytes:
    """What was pending, a finish chunk with finish_reason "error", then the error event."""
    finish = b"data: " + orjson.dumps(_finish_chunk(meta, "error")) + b"\n\n"
    return b"".join([*out, finish, b"data: " + orjson.dumps(error.to_openai()) + b"\n\n"])


def _finish_chunk(meta: Json, reason: str) -> Json:
    return {
        "id": meta.get("id", ""),
        "object": "chat.completion.chunk",
        "created": meta.get("created", int(time.time())),
        "model": meta.get("model", ""),
        "choices": [{"index": 0, "delta": {}, "finish_reason": reason}],
    }


def _usage_chunk(meta: Json, usage: dict[str, Any]) -> Json:
    return {
        "id": meta.get("id", ""),
        "object": "chat.completion.chunk",
        "created": meta.get("created", int(time.time())),
        "model": meta.get("model", ""),
        "choices": [],
        "usage": usage,
    }
