"""The HTTP server: uvicorn, with opsgate's shutdown and its guard against slow clients.

On SIGTERM uvicorn stops accepting connections and waits for requests in flight; after
`timeout_graceful_shutdown` it cancels them, which a client reads as a connection cut short. Streams can
run for minutes, so opsgate ends them itself first: once `server.shutdown_grace_s` has passed, every
stream still open is cut at once with an SSE error event and `finish_reason: "error"`, and logged as a
server-side cut (503 `stream_cut_by_server`), not as a client that went away; a plain call still waiting
(on a slow upstream) is stopped and answered 503 `cut_by_server` with Retry-After.

Slow clients (docs/operations.md "Slow clients") hold nothing for long. The HTTP protocol here is
uvicorn's httptools protocol with two bounds uvicorn lacks: a connection has `server.header_timeout_s`
to send a request's line and headers (else 408 and the connection is closed: slow-loris headers, idle
connections), and those may total `server.max_header_bytes` (else 431 and closed). Bodies and answers are
bounded in the app's middleware (`server.body_timeout_s`, `server.send_timeout_s`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import httptools
import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

LINGER_S = 1.0  # after a 408/431, how long the rest of what the client sends is read and dropped
CUT_MARGIN_S = 2.0  # time the cut streams get to send their error event before uvicorn cancels tasks
log = logging.getLogger("opsgate.http")


class GatewayServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, *, app: Any, grace_s: float) -> None:
        super().__init__(config)
        self.app = app
        self.grace_s = grace_s

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        timer = asyncio.get_running_loop().call_later(self.grace_s, self.cut_streams)
        try:
            await super().shutdown(sockets)
        finally:
            timer.cancel()

    def cut_streams(self) -> None:
        gateway = getattr(self.app.state, "gateway", None)
        if gateway is not None:
            gateway.cut_in_flight()


class _HeadTooLarge(Exception):
    pass


def _error_response(status: int, reason: bytes, code: str, message: str) -> bytes:
    body = orjson.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    )
    return b"".join(
        [
            b"HTTP/1.1 %d %s\r\n" % (status, reason),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
    )


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a deadline and a size bound on each request's head."""

    header_timeout_s = 10.0
    max_header_bytes = 16 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0  # bytes received since the request began, while its head is incomplete
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False  # answered 408/431: what still arrives is dropped until the close

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()  # a connection that sends nothing is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and not self._refused and not self.transport.is_closing():
            log.warning(
                "slow client %s: no complete request head within %s s (server.header_timeout_s); closed",
                _peer(self.client),
                self.header_timeout_s,
            )
            self._refuse(
                408,
                b"Request Timeout",
                "header_timeout",
                f"the request line and headers did not arrive within {self.header_timeout_s} s"
                " (server.header_timeout_s)",
            )

    def _refuse(self, status: int, reason: bytes, code: str, message: str) -> None:
        """Answer and close; what the client still sends is read and dropped for a moment first (a close
        with unread data resets the connection, and the client would lose the answer)."""
        self._in_head = False
        self._refused = True
        self._disarm_head_timer()
        self.transport.write(_error_response(status, reason, code, message))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)

    def _head_too_large(self) -> None:
        log.warning(
            "client %s: request head over %d bytes (server.max_header_bytes); closed",
            _peer(self.client),
            self.max_header_bytes,
        )
        self._refuse(
            431,
            b"Request Header Fields Too Large",
            "headers_too_large",
            f"the request line and headers are larger than {self.max_header_bytes} bytes"
            " (server.max_header_bytes)",
        )

    def data_received(self, data: bytes) -> None:
        if self._refused or self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__cause__, _HeadTooLarge) or isinstance(exc.__context__, _HeadTooLarge):
                self._head_too_large()
                return
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserError:
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        # the head is still incomplete after all that arrived: it may not grow past the bound
        if self._in_head and self._head_bytes > self.max_header_bytes:
            self._head_too_large()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._arm_head_timer()

    def on_headers_complete(self) -> None:
        # The head's size, counted once it is parsed (one sum, not a call per header on the hot path). A
        # head that never completes is bounded by the byte count in data_received instead.
        size = len(self.url)
        for name, value in self.headers:
            size += len(name) + len(value) + 4
        if size > self.max_header_bytes:
            raise _HeadTooLarge
        self._in_head = False
        self._head_bytes = 0
        self._disarm_head_timer()
        super().on_headers_complete()


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "?"


def guarded_protocol(*, header_timeout_s: float, max_header_bytes: int) -> type[GuardedHttpToolsProtocol]:
    """The HTTP protocol class with these bounds (uvicorn builds one instance per connection)."""
    return type(
        "GatewayHttpProtocol",
        (GuardedHttpToolsProtocol,),
        {"header_timeout_s": header_timeout_s, "max_header_bytes": max_header_bytes},
    )


def run(
    app: Any,
    *,
    grace_s: float,
    header_timeout_s: float = 10.0,
    max_header_bytes: int = 16 * 1024,
    **options: Any,
) -> None:
    """`uvicorn.run` with the stream grace period and the slow-client guard (options are uvicorn.Config's)."""
    options["http"] = guarded_protocol(header_timeout_s=header_timeout_s, max_header_bytes=max_header_bytes)
    config = uvicorn.Config(app, timeout_graceful_shutdown=int(grace_s + CUT_MARGIN_S + 0.999), **options)
    GatewayServer(config, app=app, grace_s=grace_s).run()
