"""A minimal Redis client for the policy hot path: one connection, pipelined, RESP2.

redis-py's asyncio client spends 200-280 µs of CPU per EVALSHA here (command packing through several
layers, pool locks, parser classes), a quarter of the whole checks budget of a request. Writing the
packed command to one connection and matching replies to callers in order (Redis answers in order)
costs ~70 µs. This is only what the quota store needs: commands out; integers, bulk strings, arrays and
errors in. URL parsing and the exception types come from the `redis` package.

A connection that fails or times out fails every call waiting on it and is opened again by the next
call: after a timeout the order of replies can no longer be trusted.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
from typing import Any

from redis.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

Reply = int | bytes | list[Any] | None | ResponseError


def pack(args: tuple[bytes | str | int, ...]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class RespConnection:
    def __init__(self, url: str, *, timeout_s: float = 1.0) -> None:
        self.options: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        self.tls = url.startswith("rediss://")
        self.timeout_s = timeout_s
        self.where = (
            self.options.get("path")
            or f"{self.options.get('host', 'localhost')}:{self.options.get('port', 6379)}"
        )
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: collections.deque[asyncio.Future[Reply]] = collections.deque()
        self._reading: asyncio.Task[None] | None = None
        self._connecting = asyncio.Lock()

    async def call(self, *args: bytes | str | int) -> Any:
        """Send one command and wait for its reply; a Redis error reply is raised."""
        writer = self._writer if self._writer is not None else await self._connect()
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending.append(future)
        writer.write(pack(args))
        try:
            reply = await asyncio.wait_for(future, self.timeout_s)
        except TimeoutError:
            self._drop(
                RedisConnectionError(f"Redis at {self.where} did not answer within {self.timeout_s} s")
            )
            raise
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def _connect(self) -> asyncio.StreamWriter:
        async with self._connecting:
            if self._writer is not None:
                return self._writer
            try:
                reader, writer = await asyncio.wait_for(self._open(), self.timeout_s)
            except (OSError, TimeoutError) as exc:
                raise RedisConnectionError(f"cannot connect to Redis at {self.where}: {exc}") from exc
            self._reader, self._writer = reader, writer
            self._reading = asyncio.ensure_future(self._read_loop(reader))
            await self._handshake()
            return writer

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        path = self.options.get("path")
        if path:
            return await asyncio.open_unix_connection(path)
        context = ssl.create_default_context() if self.tls else None
        return await asyncio.open_connection(
            self.options.get("host", "localhost"), self.options.get("port", 6379), ssl=context
        )

    async def _handshake(self) -> None:
        password, username = self.options.get("password"), self.options.get("username")
        if password:
            await self.call(*(("AUTH", username, password) if username else ("AUTH", password)))
        if self.options.get("db"):
            await self.call("SELECT", self.options["db"])

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                reply = await self._read_reply(reader)
                if self._pending:
                    future = self._pending.popleft()
                    if not future.done():
                        future.set_result(reply)
        except (OSError, asyncio.IncompleteReadError, RedisConnectionError, ValueError) as exc:
            self._drop(RedisConnectionError(f"connection to Redis at {self.where} lost: {exc}"))

    async def _read_reply(self, reader: asyncio.StreamReader) -> Reply:
        line = await reader.readline()
        if not line.endswith(b"\r\n"):
            raise RedisConnectionError("connection closed")
        kind, rest = line[:1], line[1:-2]
        if kind == b":":
            return int(rest)
        if kind == b"+":
            return rest
        if kind == b"-":
            text = rest.decode(errors="replace")
            return NoScriptError(text) if text.startswith("NOSCRIPT") else ResponseError(text)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else (await reader.readexactly(size + 2))[:-2]
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [await self._read_reply(reader) for _ in range(size)]
        raise RedisConnectionError(f"unexpected reply from Redis: {line[:40]!r}")

    def _drop(self, error: Exception) -> None:
        """Fail every waiting call and forget the connection (the next call opens a new one)."""
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
        if self._reading is not None and self._reading is not asyncio.current_task():
            self._reading.cancel()
        self._reading = None
        while self._pending:
            future = self._pending.popleft()
            if not future.done():
                future.set_exception(error)

    async def aclose(self) -> None:
        reading = self._reading
        self._drop(RedisConnectionError("the client was closed"))
        if reading is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await reading
