"""The OpenAI-compatible endpoints: thin HTTP around `gateway.flow.gateway.Gateway`.

Each endpoint opens the request's call (`opened_call`: authentication, and the one log row whatever
happens), parses the body into its typed request, and hands it to the flow.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway.api.deps import gateway_of, opened_call, read_json
from gateway.api.openapi_spec import (
    CALL_ERRORS,
    SSE_CHUNKS,
    ChatCompletion,
    ChatCompletionChunk,
    EmbeddingList,
    ModelCard,
    ModelList,
    json_body,
    responses,
)
from gateway.api_requests import ChatRequest, EmbeddingRequest
from gateway.flow.sse import ChatStream

router = APIRouter(prefix="/v1", tags=["openai"])

JSON = "application/json"


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type=JSON)


_CHAT_OK: dict[int | str, dict[str, Any]] = {
    200: {"model": ChatCompletion, "description": "The completion.", "content": SSE_CHUNKS}
}


@router.post(
    "/chat/completions",
    summary="Create a chat completion (streaming with SSE)",
    responses={**_CHAT_OK, **responses(None, *CALL_ERRORS)},
    openapi_extra=json_body(ChatRequest, also=[ChatCompletionChunk]),
)
async def chat_completions(request: Request) -> Response:
    async with opened_call(request, "/v1/chat/completions") as call:
        chat = ChatRequest.parse(await read_json(request))
        answer = await gateway_of(request).chat(call, chat)
    if isinstance(answer, ChatStream):
        return _sse(answer)
    return _json(answer)


@router.post(
    "/embeddings",
    summary="Create embeddings",
    responses=responses(EmbeddingList, *CALL_ERRORS),
    openapi_extra=json_body(EmbeddingRequest),
)
async def embeddings(request: Request) -> Response:
    async with opened_call(request, "/v1/embeddings") as call:
        data = await gateway_of(request).embeddings(call, EmbeddingRequest.parse(await read_json(request)))
    return _json(data)


@router.get("/models", summary="List the models this key may call", responses=responses(ModelList, 401, 503))
async def list_models(request: Request) -> Response:
    async with opened_call(request, "/v1/models") as call:
        assert call.principal is not None
        data = {"object": "list", "data": gateway_of(request).models(call.principal)}
    return _json(data)


@router.get(
    "/models/{model_id:path}",
    summary="Describe one model",
    responses=responses(ModelCard, 401, 404, 503),
)
async def get_model(request: Request, model_id: str) -> Response:
    async with opened_call(request, "/v1/models/{id}", model=model_id) as call:
        assert call.principal is not None
        data = gateway_of(request).model(call.principal, model_id)
    return _json(data)


def _sse(stream: ChatStream) -> Response:
    return ClosingStreamingResponse(
        stream.sse(),
        stream.abandon,
        on_slow=stream.too_slow,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


class ClosingStreamingResponse(StreamingResponse):
    """A streaming response that always runs `cleanup`, even when the client left before the first byte
    (Starlette then cancels the response without ever starting the body iterator)."""

    def __init__(
        self,
        content: AsyncIterator[bytes],
        cleanup: Callable[[], Awaitable[None]],
        *,
        on_slow: Callable[[], None] | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(content, **kw)
        self._content = content
        self._cleanup = cleanup
        self._on_slow = on_slow

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self._on_slow is not None and scope.get("state", {}).get("client_too_slow"):
                self._on_slow()  # the middleware cut it: the reader stopped reading (server.send_timeout_s)
            await asyncio.shield(self._close())

    async def _close(self) -> None:
        aclose = getattr(self._content, "aclose", None)
        if aclose is not None:
            await aclose()  # runs the stream's own end if it started
        await self._cleanup()  # and covers a client gone before it started
