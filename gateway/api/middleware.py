"""Pure ASGI middleware (no per-request task or buffering, so streams flow through untouched).

Gives every request an id, stamps `x-opsgate-request-id` and `x-opsgate-versions` on every answer,
refuses bodies over the limit with 413 (by Content-Length, or while reading a chunked body), and turns
any unexpected exception into OpenAI-style error JSON with no traceback.

Slow clients (docs/operations.md "Slow clients"): a body must arrive whole within `server.body_timeout_s`
(else 408 `body_timeout`, logged, and the connection is closed), and each write of an answer may wait at
most `server.send_timeout_s` for the client to read (else the answer is cut, the connection closed, and
a stream is logged as 408 `client_too_slow`). What waits meanwhile is bounded by the transport's write
buffer (64 KiB high-water mark) plus one chunk.

It also tunes the cyclic garbage collector once start-up is complete (see `_freeze_startup_heap`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import secrets
from collections.abc import Awaitable, Coroutine, Generator
from types import CoroutineType
from typing import Any, Generic, TypeVar

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import BodyTooLarge, ClientTooSlow, OpsgateError, RequestTimeout

log = logging.getLogger("opsgate.http")

T = TypeVar("T")


async def within(awaitable: Awaitable[T], deadline: float) -> T:
    """`await coro`, raising TimeoutError at `deadline` (loop time), with the timer paid for only when the
    coroutine suspends. A send to a reading client, or a receive of a body that has already arrived,
    completes at its first step; `asyncio.timeout` around every one of them cost each request a timer
    (schedule and cancel) per message."""
    if not isinstance(awaitable, CoroutineType):  # e.g. a future: no first step to take here
        async with asyncio.timeout_at(deadline):
            return await awaitable
    coro: Coroutine[Any, Any, T] = awaitable
    try:
        pending = coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    except BaseException:
        coro.close()
        raise
    async with asyncio.timeout_at(deadline):
        return await _Resumed(coro, pending)


class _Resumed(Generic[T]):
    """The rest of a coroutine that has already run to its first suspension (what `await` would do with
    it from there: what it waits on is handed to the task, and what the task sends or throws is passed
    back in, cancellation included)."""

    __slots__ = ("coro", "pending")

    def __init__(self, coro: Coroutine[Any, Any, T], pending: Any) -> None:
        self.coro, self.pending = coro, pending

    def __await__(self) -> Generator[Any, Any, T]:
        coro, pending = self.coro, self.pending
        while True:
            try:
                sent = yield pending
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # noqa: BLE001 - everything goes back into the coroutine, as await does
                try:
                    pending = coro.throw(exc)
                except StopIteration as done:
                    return done.value  # type: ignore[no-any-return]
            else:
                try:
                    pending = coro.send(sent)
                except StopIteration as done:
                    return done.value  # type: ignore[no-any-return]


def error_body(exc: OpsgateError) -> bytes:
    return orjson.dumps(exc.to_openai())


class GatewayMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        body_timeout_s: float = 30.0,
        send_timeout_s: float = 30.0,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.send_timeout_s = send_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self.app(scope, receive, _after_startup(send))
                return
            await self.app(scope, receive, send)
            return
        request_id = "req_" + secrets.token_hex(12)
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        started = False
        send_timeout = self.send_timeout_s

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                headers.append((b"x-opsgate-request-id", request_id.encode()))
                headers.append((b"x-opsgate-versions", str(state.get("versions", "")).encode()))
                if state.get("close_connection"):  # the rest of a slow body is not waited for
                    headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
                await send(message)
                return
            try:
                await within(send(message), asyncio.get_running_loop().time() + send_timeout)
            except TimeoutError:
                state["client_too_slow"] = True
                log.warning(
                    "slow client on %s (request %s): a write waited %s s (server.send_timeout_s); answer cut",
                    scope.get("path"),
                    request_id,
                    send_timeout,
                )
                raise ClientTooSlow(
                    f"the client did not read the answer for {send_timeout} s (server.send_timeout_s)"
                ) from None

        limit = self.max_body_bytes
        declared_too_large = False
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared_too_large = int(value) > limit
                except ValueError:
                    declared_too_large = False

        received = 0
        body_done = False
        body_timeout = self.body_timeout_s
        body_deadline = asyncio.get_running_loop().time() + body_timeout

        async def receive_wrapper() -> Message:
            nonlocal received, body_done
            if declared_too_large:  # refused before a byte is read, inside the handler so it is logged
                raise _too_large(limit)
            if body_done:  # e.g. a streaming response listening for the client to leave: no deadline
                return await receive()
            try:
                message: Message = await within(receive(), body_deadline)
            except TimeoutError:
                state["close_connection"] = True
                raise RequestTimeout(
                    f"the request body did not arrive within {body_timeout} s (server.body_timeout_s)"
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _too_large(limit)  # the handler logs it; the app's error handler renders 413
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        except ClientTooSlow:
            return  # logged above; the server closes the connection of an unfinished answer
        except OpsgateError as exc:  # raised outside a handler (e.g. a body read by the framework)
            if not started:
                await self._error(send_wrapper, exc)
        except Exception:
            log.exception(
                "unhandled error on %s %s (request %s)", scope.get("method"), scope.get("path"), request_id
            )
            if not started:
                await self._error(
                    send_wrapper,
                    OpsgateError(f"internal error; quote request id {request_id} when reporting it"),
                )

    async def _error(self, send: Send, exc: OpsgateError) -> None:
        body = error_body(exc)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
        await send({"type": "http.response.start", "status": exc.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


_heap_frozen = False


GC_GEN0_THRESHOLD = 10_000


def _freeze_startup_heap() -> None:
    """Once per process, after start-up: collect, then move every object alive now (modules, config,
    caches: ~150k objects) to the GC's permanent generation. Full collections then scan only what
    requests create, instead of taking ~100 ms every few seconds under load (p99 spikes).
    Also raise the young-generation threshold (700 by default): the objects of a few requests in
    flight reach 700, so the GC ran every ~8 requests and took ~10% of the CPU under load, only to
    promote objects that die a moment later. Cyclic garbage is still collected, a little later."""
    global _heap_frozen
    if _heap_frozen:
        return
    _heap_frozen = True
    gc.collect()
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    if 0 < gen0 < GC_GEN0_THRESHOLD:
        gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def _after_startup(send: Send) -> Send:
    async def send_wrapper(message: Message) -> None:
        if message["type"] == "lifespan.startup.complete":
            _freeze_startup_heap()
        await send(message)

    return send_wrapper


def _too_large(limit: int) -> BodyTooLarge:
    return BodyTooLarge(f"the request body is larger than the limit of {limit} bytes (server.max_body_bytes)")
