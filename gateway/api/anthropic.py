"""Anthropic's Messages API: `POST /v1/messages` (plain and streamed) and `POST /v1/messages/count_tokens`,
bridged to the chat flow (gateway/surfaces/anthropic.py). Keys come as `x-api-key` (Anthropic's clients)
or `Authorization: Bearer`; errors come in Anthropic's shape."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.api.deps import gateway_of, opened_call, read_json
from gateway.api.openai import _json, _sse
from gateway.api.openapi_spec import (
    CALL_ERRORS,
    AnthropicErrorBody,
    AnthropicMessage,
    TokenCount,
    error_responses,
    streamed,
)
from gateway.errors import OpsgateError
from gateway.flow.call import Call
from gateway.flow.sse import ChatStream
from gateway.flow.traffic import Surface, surface_id
from gateway.policy.base import Subject
from gateway.surfaces import anthropic as bridge
from gateway.surfaces.common import parse
from gateway.tokens_cost import count_message_tokens, count_text_tokens

router = APIRouter(
    prefix="/v1", tags=["anthropic"], responses=error_responses(*CALL_ERRORS, shape=AnthropicErrorBody)
)


def _schema(model: Any) -> dict[str, Any]:
    return {"requestBody": {"content": {"application/json": {"schema": model.model_json_schema()}}}}


@asynccontextmanager
async def anthropic_call(request: Request, route: str) -> AsyncIterator[Call]:
    key = request.headers.get("x-api-key")
    async with opened_call(request, route, authorization=f"Bearer {key}" if key else None) as call:
        yield call


async def answer_errors(handler: Callable[[], Awaitable[Response]]) -> Response:
    """Anthropic's error shape for whatever the flow refused (the log row is already written)."""
    try:
        return await handler()
    except OpsgateError as exc:
        headers = dict(exc.headers)
        retry = getattr(exc, "retry_after_s", None)
        if retry:
            headers.setdefault("retry-after", str(max(1, int(retry + 0.999))))
        return Response(
            bridge.error_body(exc), status_code=exc.status, media_type="application/json", headers=headers
        )


@router.post(
    "/messages",
    summary="Create a message (Anthropic Messages API; streamed with Anthropic's events)",
    responses=streamed(
        AnthropicMessage,
        "`stream: true`: Anthropic's events (`event:` and `data:` lines), message_start first and"
        " message_stop last; a stream cut after it started ends with an `error` event.",
    ),
    openapi_extra=_schema(bridge.MessagesRequest),
)
async def create_message(request: Request) -> Response:
    async def handle() -> Response:
        async with anthropic_call(request, "/v1/messages") as call:
            parsed = bridge.parse_request(await read_json(request))
            chat = bridge.to_chat(parsed)
            surface = Surface("message", "msg_")
            message_id = surface_id(surface, call)
            surface = Surface(
                "message", "msg_", lambda data: bridge.message_object(message_id, parsed.model, data)
            )
            answer = await gateway_of(request).chat(call, chat, surface)
            if isinstance(answer, ChatStream):
                answer.encoder = bridge.MessagesEncoder(message_id, parsed.model)
                return _sse(answer)
            data = bridge.message_object(message_id, parsed.model, answer)  # before the row is written
        return _json(data)

    return await answer_errors(handle)


@router.post(
    "/messages/count_tokens",
    summary="Count the input tokens of a message request",
    response_model=TokenCount,
    openapi_extra=_schema(bridge.CountRequest),
)
async def count_tokens(request: Request) -> Response:
    async def handle() -> Response:
        async with anthropic_call(request, "/v1/messages/count_tokens") as call:
            parsed = parse(bridge.CountRequest, await read_json(request))
            gateway = gateway_of(request)
            router_, asked = gateway.resolver.router(call, parsed.model, "chat")
            gateway.access.authorise(call.principal, [asked])
            # access rules and admission limits (rpm) as for the call it counts
            subject = Subject.of(call.principal, (("router", router_.name),), "chat")
            await gateway.policy.authorise(call, subject, early=True)
            messages = bridge.chat_messages(parsed.system, parsed.messages)
            tools = bridge.chat_tools(parsed.tools) if parsed.tools else []
            model = router_.spec.deployments[0].model
            # off the event loop: 4 MB of text takes seconds to count, and /healthz must keep answering
            total = await asyncio.to_thread(_count_input, messages, tools, model)
        return _json({"input_tokens": total})

    return await answer_errors(handle)


def _count_input(messages: list[Any], tools: list[Any], model: str) -> int:
    return count_message_tokens(messages, model) + sum(count_text_tokens(str(tool), model) for tool in tools)
