"""The Responses API: create (plain or streamed), retrieve, delete, input items; bridged to the chat flow
(gateway/surfaces/responses.py) so routers, prompts, retrieval, policies, lineage and the log apply.

Responses are stored by default (`store: true`, as OpenAI), in the traffic store, owner-scoped: another
principal's response id is a 404, for reading and for `previous_response_id` alike.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.api import conversations
from gateway.api.deps import gateway_of, opened_call, read_json
from gateway.api.openai import _json, _sse
from gateway.api.openapi_spec import (
    CALL_ERRORS,
    Deleted,
    ItemList,
    ResponseObject,
    error_responses,
    streamed,
)
from gateway.api.stored import ListQuery, traffic_of
from gateway.egress.params import check_responses_params
from gateway.errors import NotFound, OpsgateError
from gateway.flow.call import Call
from gateway.flow.sse import ChatStream
from gateway.flow.traffic import Surface, surface_id
from gateway.keys import Principal
from gateway.shapes import Json
from gateway.surfaces import conversations as conv_shapes
from gateway.surfaces import responses as bridge
from gateway.traffic.store import StoredCall, TrafficStore

router = APIRouter(prefix="/v1", tags=["responses"], responses=error_responses(*CALL_ERRORS))
KIND = "response"


@router.post(
    "/responses",
    summary="Create a model response (streamed as Responses events)",
    responses=streamed(
        ResponseObject,
        "`stream: true`: the Responses API's events (`event:` and `data:` lines), response.created first and"
        " response.completed last; a stream cut after it started ends with `error` then response.failed.",
    ),
    openapi_extra={
        "requestBody": {
            "content": {"application/json": {"schema": bridge.ResponsesRequest.model_json_schema()}}
        }
    },
)
async def create_response(request: Request) -> Response:
    async with opened_call(request, "/v1/responses") as call:
        body = await read_json(request)
        if isinstance(
            body, dict
        ):  # nested keys too: the bridge would drop them, a native deployment gets them
            check_responses_params(bridge.native_body(body))
        parsed = bridge.parse_request(body)
        surface = Surface(KIND, "resp_")
        turn = bridge.Turn(parsed, surface_id(surface, call), int(call.ts.timestamp()))
        if parsed.previous_response_id is not None:
            previous = await _stored(request, call, parsed.previous_response_id, "previous_response_id")
            turn.history = list(previous.payload.get("conversation") or []) + bridge.output_messages(
                previous.payload.get("response") or {}
            )
        turn.conversation_id = bridge.conversation_id(parsed)
        appended = None
        if turn.conversation_id is not None:
            assert call.principal is not None
            store, who = traffic_of(request), call.principal
            held = await conversations.load(store, who, turn.conversation_id, "conversation")
            turn.history = conv_shapes.chat_messages(list(held.payload.get("items") or []))
            appended = _appender(call, store, who, turn)
        chat = bridge.to_chat(turn)
        surface = Surface(
            KIND,
            "resp_",
            render=lambda data: bridge.response_object(turn, data),
            extra=lambda: {"conversation": turn.conversation, "input": parsed.input},
            stored=appended,
            native=bridge.native_body(body) if bridge.may_be_native(parsed) else None,
        )
        answer = await gateway_of(request).chat(call, chat, surface)
        if isinstance(answer, ChatStream):
            answer.encoder = bridge.ResponsesEncoder(turn)
            return _sse(answer)
        data = bridge.response_object(turn, answer)  # before the row is written
    return _json(data)


@router.get("/responses/{response_id}", summary="Get a stored response", response_model=ResponseObject)
async def get_response(request: Request, response_id: str) -> Response:
    async with opened_call(request, "/v1/responses/{id}") as call:
        stored = await _stored(request, call, response_id)
    return _json(stored.payload.get("response") or {})


@router.delete("/responses/{response_id}", summary="Delete a stored response", response_model=Deleted)
async def delete_response(request: Request, response_id: str) -> Response:
    async with opened_call(request, "/v1/responses/{id}:delete") as call:
        assert call.principal is not None
        deleted = await asyncio.to_thread(traffic_of(request).delete, call.principal, response_id, KIND)
        if not deleted:
            raise _not_found(response_id, "response_id")
    return _json({"id": response_id, "object": "response", "deleted": True})


@router.get(
    "/responses/{response_id}/input_items",
    summary="The input items of a stored response",
    response_model=ItemList,
)
async def list_input_items(request: Request, response_id: str) -> Response:
    async with opened_call(request, "/v1/responses/{id}/input_items") as call:
        query = ListQuery.of(request, filters=False, default_order="desc")
        stored = await _stored(request, call, response_id)
        items = bridge.input_items({"input": stored.payload.get("input")}, response_id)
        if query.order == "desc":
            items.reverse()
        if query.after is not None:
            ids = [item["id"] for item in items]
            items = items[ids.index(query.after) + 1 :] if query.after in ids else []
        chosen = items[: query.limit]
        data = {
            "object": "list",
            "data": chosen,
            "first_id": chosen[0]["id"] if chosen else None,
            "last_id": chosen[-1]["id"] if chosen else None,
            "has_more": len(items) > query.limit,
        }
    return _json(data)


def _appender(
    call: Call, store: TrafficStore, who: Principal, turn: bridge.Turn
) -> Callable[[Json], Awaitable[None]]:
    """Once the response is stored: its input items and output items join the conversation. A conversation
    deleted (or grown too large) meanwhile does not undo the answer; the log row's extra says so."""
    conversation_id = turn.conversation_id
    assert conversation_id is not None
    raw = turn.request.input
    new_input = conv_shapes.stored_items(
        [{"role": "user", "content": raw}] if isinstance(raw, str) else list(raw), turn.hex + "_in", "input"
    )

    async def append(answer: Json) -> None:
        added = new_input + list(answer.get("output") or [])
        try:
            await conversations.change_items(store, who, conversation_id, lambda items: items + added)
        except OpsgateError as exc:
            call.extra["conversation"] = {"id": conversation_id, "appended": False, "reason": exc.message}
            return
        call.extra["conversation"] = {"id": conversation_id, "appended": len(added)}

    return append


async def _stored(request: Request, call: Call, response_id: str, param: str = "response_id") -> StoredCall:
    assert call.principal is not None
    stored = await asyncio.to_thread(traffic_of(request).get, call.principal, response_id, KIND)
    if stored is None:
        raise _not_found(response_id, param)
    return stored


def _not_found(response_id: str, param: str) -> NotFound:
    return NotFound(
        f"no stored response {response_id!r} for this key (responses created with store: false are not kept)",
        param=param,
        code="not_found",
    )
