"""`POST /v1/completions` (legacy completions), bridged to the chat flow (gateway/surfaces/completions.py):
same routers, prompts, policies, lineage and one log row as chat."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.api.deps import gateway_of, opened_call, read_json
from gateway.api.openai import _json, _sse
from gateway.api.openapi_spec import CALL_ERRORS, TextCompletion, error_responses, streamed
from gateway.flow.sse import ChatStream
from gateway.flow.traffic import Surface, surface_id
from gateway.surfaces import completions as bridge

router = APIRouter(prefix="/v1", tags=["completions"], responses=error_responses(*CALL_ERRORS))


@router.post(
    "/completions",
    summary="Create a (legacy) completion, plain or streamed",
    responses=streamed(
        TextCompletion,
        "`stream: true`: `data:` lines of text_completion chunks, then `data: [DONE]`; a stream cut after it"
        ' started ends with a chunk whose finish_reason is "error", then an `error` object.',
    ),
    openapi_extra={
        "requestBody": {
            "content": {"application/json": {"schema": bridge.CompletionRequest.model_json_schema()}}
        }
    },
)
async def create_completion(request: Request) -> Response:
    async with opened_call(request, "/v1/completions") as call:
        legacy, chat = bridge.to_chat(await read_json(request))
        surface = Surface(
            "text_completion", "cmpl-", lambda data: bridge.from_chat(legacy, data, surface_id(surface, call))
        )
        answer = await gateway_of(request).chat(call, chat, surface)
        if isinstance(answer, ChatStream):
            answer.encoder = bridge.CompletionEncoder(legacy, surface_id(surface, call))
            return _sse(answer)
        data = bridge.from_chat(legacy, answer, surface_id(surface, call))  # before the row is written
    return _json(data)
