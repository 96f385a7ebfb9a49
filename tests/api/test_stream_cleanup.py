"""A client that leaves before a stream's first byte: the clean-up still runs (upstream closed, row logged)."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import pytest

from gateway.api.openai import ClosingStreamingResponse


@pytest.mark.parametrize("spec_version", ["2.4", "2.0"])
async def test_cleanup_runs_when_the_client_is_gone_before_the_first_byte(spec_version: str) -> None:
    events: list[str] = []

    async def body() -> AsyncGenerator[bytes]:
        events.append("body started")
        try:
            yield b"data: {}\n\n"
        finally:
            events.append("body closed")

    async def cleanup() -> None:
        events.append("cleanup")

    async def receive() -> dict[str, object]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        raise OSError("connection reset by peer")  # the socket is gone before the headers go out

    response = ClosingStreamingResponse(body(), cleanup, media_type="text/event-stream")
    scope = {"type": "http", "asgi": {"spec_version": spec_version}, "method": "POST", "path": "/"}
    with pytest.raises(Exception):  # noqa: B017 - Starlette reports the disconnect its own way per ASGI version
        await response(scope, receive, send)  # type: ignore[arg-type]
    assert events[-1] == "cleanup"
    assert "body started" not in events  # the body never ran: without the clean-up nothing would be logged
