"""The OpenAI-compatible endpoints: thin HTTP around `gateway.serving.Gateway`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway.api.deps import call_for, gateway_of, read_json
from gateway.errors import OpsgateError
from gateway.serving import Call, Gateway
from gateway.wire import ChatRequest, EmbeddingRequest, upstream_body, validate

router = APIRouter(prefix="/v1", tags=["openai"])

JSON = "application/json"


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type=JSON)


@router.post("/chat/completions", summary="Create a chat completion (streaming with SSE)")
async def chat_completions(request: Request) -> Response:
    gateway = gateway_of(request)
    call = call_for(request, "/v1/chat/completions")
    try:
        gateway.authenticate(call, request.headers.get("authorization"))
        data = await read_json(request)
        req = validate(ChatRequest, data)
        call.stream = req.stream
        plan = await gateway.plan_chat(call, data, req)
        request.state.versions = call.versions_header
        router, body = plan.router, plan.body
        await gateway.policy.check_chat(call, router, body, data)
        messages = body["messages"]
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            first, rest = await gateway.open_stream(call, router, body)
            sse = gateway.stream_sse(call, first, rest, messages, include_usage)

            async def cleanup() -> None:
                await sse.aclose()  # runs the stream's own clean-up if it started
                await gateway.abandon_stream(call, rest)  # and covers a client gone before it started

            return ClosingStreamingResponse(
                sse,
                cleanup,
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        result = await gateway.chat(call, router, body, messages)
    except OpsgateError as exc:
        _fail(gateway, call, request, exc)
        raise
    gateway.finish(call, 200)
    return _json(result)


@router.post("/embeddings", summary="Create embeddings")
async def embeddings(request: Request) -> Response:
    gateway = gateway_of(request)
    call = call_for(request, "/v1/embeddings")
    try:
        gateway.authenticate(call, request.headers.get("authorization"))
        data = await read_json(request)
        req = validate(EmbeddingRequest, data)
        router = gateway.resolve_router(call, req.model, "embedding")
        request.state.versions = call.versions_header
        body = upstream_body(data)
        await gateway.policy.check_embedding(call, router, body)
        result = await gateway.embed(call, router, body)
    except OpsgateError as exc:
        _fail(gateway, call, request, exc)
        raise
    gateway.finish(call, 200)
    return _json(result)


@router.get("/models", summary="List the models this key may call")
async def list_models(request: Request) -> Response:
    gateway = gateway_of(request)
    call = call_for(request, "/v1/models")
    try:
        principal = gateway.authenticate(call, request.headers.get("authorization"))
        data = {"object": "list", "data": gateway.models(principal)}
    except OpsgateError as exc:
        _fail(gateway, call, request, exc)
        raise
    gateway.finish(call, 200)
    return _json(data)


@router.get("/models/{model_id:path}", summary="Describe one model")
async def get_model(request: Request, model_id: str) -> Response:
    gateway = gateway_of(request)
    call = call_for(request, "/v1/models/{id}")
    call.model = model_id
    try:
        principal = gateway.authenticate(call, request.headers.get("authorization"))
        data = gateway.model(principal, model_id)
    except OpsgateError as exc:
        _fail(gateway, call, request, exc)
        raise
    gateway.finish(call, 200)
    return _json(data)


class ClosingStreamingResponse(StreamingResponse):
    """A streaming response that always runs `cleanup`, even when the client left before the first byte
    (Starlette then cancels the response without ever starting the body iterator)."""

    def __init__(
        self, content: AsyncIterator[bytes], cleanup: Callable[[], Awaitable[None]], **kw: Any
    ) -> None:
        super().__init__(content, **kw)
        self._cleanup = cleanup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await asyncio.shield(self._cleanup())


def _fail(gateway: Gateway, call: Call, request: Request, exc: OpsgateError) -> None:
    request.state.versions = call.versions_header
    gateway.finish(call, exc.status, exc)
