"""The HTTP server: uvicorn, with opsgate's shutdown.

On SIGTERM uvicorn stops accepting connections and waits for requests in flight; after
`timeout_graceful_shutdown` it cancels them, which a client reads as a connection cut short. Streams can
run for minutes, so opsgate ends them itself first: once `server.shutdown_grace_s` has passed, every
stream still open is cut at once with an SSE error event and `finish_reason: "error"`, and logged as a
server-side cut (503 `stream_cut_by_server`), not as a client that went away.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import uvicorn

CUT_MARGIN_S = 2.0  # time the cut streams get to send their error event before uvicorn cancels tasks


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
        for stream in list(getattr(gateway, "streams", ())):
            stream.cut()


def run(app: Any, *, grace_s: float, **options: Any) -> None:
    """`uvicorn.run` with the stream grace period (options are uvicorn.Config's)."""
    config = uvicorn.Config(app, timeout_graceful_shutdown=int(grace_s + CUT_MARGIN_S + 0.999), **options)
    GatewayServer(config, app=app, grace_s=grace_s).run()
