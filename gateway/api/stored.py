"""Stored chat completions (OpenAI's API): list, retrieve, messages, update metadata, delete.

A chat completion is stored when it was created with `store: true` (or its router or prompt is stored by
config: `traffic:` in config/gateway.yaml). Each key sees only its own principal's calls (an admin sees
all): another principal's id answers 404, exactly like an id that never existed.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from gateway.api.deps import gateway_of, opened_call, read_json
from gateway.api.openapi_spec import CALL_ERRORS, error_responses
from gateway.api_requests import validate
from gateway.egress.params import ParamRules
from gateway.errors import InvalidRequest, NotFound
from gateway.flow.call import Call
from gateway.keys import Principal
from gateway.traffic.store import Page, StoredCall, TrafficStore

router = APIRouter(prefix="/v1", tags=["stored completions"], responses=error_responses(*CALL_ERRORS))
KIND = "chat.completion"


class CompletionList(BaseModel):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool


class CompletionDeleted(BaseModel):
    object: Literal["chat.completion.deleted"] = "chat.completion.deleted"
    id: str
    deleted: bool


class MetadataUpdate(BaseModel):
    metadata: dict[str, str] | None = Field(description="Replaces the stored completion's metadata.")


def traffic_of(request: Request) -> TrafficStore:
    recorder = gateway_of(request).traffic
    if recorder is None:
        raise NotFound("this gateway keeps no stored calls", code="traffic_store_disabled")
    return recorder.store


def _json(data: Any) -> Response:
    return Response(orjson.dumps(data), media_type="application/json")


@router.get("/chat/completions", summary="List stored chat completions", response_model=CompletionList)
async def list_completions(request: Request) -> Response:
    async with opened_call(request, "/v1/chat/completions:list") as call:
        query = ListQuery.of(request)
        page = await asyncio.to_thread(
            traffic_of(request).list,
            _who(call),
            KIND,
            model=query.model,
            metadata=query.metadata,
            after=query.after,
            limit=query.limit,
            order=query.order,
        )
        data = page_body(page, completion_of)
    return _json(data)


@router.get(
    "/chat/completions/{completion_id}", summary="Get a stored chat completion", response_model=dict[str, Any]
)
async def get_completion(request: Request, completion_id: str) -> Response:
    async with opened_call(request, "/v1/chat/completions/{id}") as call:
        stored = await _stored(request, call, completion_id)
    return _json(completion_of(stored))


@router.get(
    "/chat/completions/{completion_id}/messages",
    summary="The messages of a stored chat completion",
    response_model=CompletionList,
)
async def get_messages(request: Request, completion_id: str) -> Response:
    async with opened_call(request, "/v1/chat/completions/{id}/messages") as call:
        query = ListQuery.of(request, filters=False)
        stored = await _stored(request, call, completion_id)
        data = message_page(stored, query)
    return _json(data)


@router.post(
    "/chat/completions/{completion_id}",
    summary="Update a stored chat completion's metadata",
    response_model=dict[str, Any],
    openapi_extra={
        "requestBody": {"content": {"application/json": {"schema": MetadataUpdate.model_json_schema()}}}
    },
)
async def update_completion(request: Request, completion_id: str) -> Response:
    async with opened_call(request, "/v1/chat/completions/{id}:update") as call:
        body = validate(MetadataUpdate, await read_json(request))
        ParamRules().check({"metadata": body.metadata}, "chat")  # OpenAI's limits on metadata
        updated = await asyncio.to_thread(
            traffic_of(request).update_metadata, _who(call), completion_id, KIND, body.metadata or {}
        )
        if updated is None:
            raise _not_found(completion_id)
    return _json(completion_of(updated))


@router.delete(
    "/chat/completions/{completion_id}",
    summary="Delete a stored chat completion",
    response_model=CompletionDeleted,
)
async def delete_completion(request: Request, completion_id: str) -> Response:
    async with opened_call(request, "/v1/chat/completions/{id}:delete") as call:
        deleted = await asyncio.to_thread(traffic_of(request).delete, _who(call), completion_id, KIND)
        if not deleted:
            raise _not_found(completion_id)
    return _json(CompletionDeleted(id=completion_id, deleted=True).model_dump())


# -- shapes ---------------------------------------------------------------------------------------------


class ListQuery:
    """`after`, `limit`, `order` (and for lists of calls `model` and `metadata[key]=value`)."""

    def __init__(self, after: str | None, limit: int, order: Literal["asc", "desc"], model: str | None,
                 metadata: dict[str, str]) -> None:  # fmt: skip
        self.after, self.limit, self.order, self.model, self.metadata = after, limit, order, model, metadata

    @classmethod
    def of(cls, request: Request, *, filters: bool = True, default_order: str = "asc") -> ListQuery:
        params = request.query_params
        raw_limit = params.get("limit", "20")
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 100:
            raise InvalidRequest("limit: must be a whole number from 1 to 100", param="limit")
        order = params.get("order", default_order)
        if order not in ("asc", "desc"):
            raise InvalidRequest("order: must be 'asc' or 'desc'", param="order")
        metadata: dict[str, str] = {}
        for key, value in params.multi_items():
            if key.startswith("metadata[") and key.endswith("]") and filters:
                metadata[key[len("metadata[") : -1]] = value
        model = params.get("model") if filters else None
        return cls(params.get("after"), int(raw_limit), order, model, metadata)  # type: ignore[arg-type]


def page_body(page: Page, render: Any) -> dict[str, Any]:
    data = [render(item) for item in page.items]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": page.has_more,
    }


def completion_of(stored: StoredCall) -> dict[str, Any]:
    """The stored answer as OpenAI returns a stored completion (its metadata and request id added)."""
    response = dict(stored.payload.get("response") or {})
    response["id"] = stored.id
    response["metadata"] = stored.metadata
    response["request_id"] = stored.request_id
    return response


def message_page(stored: StoredCall, query: ListQuery) -> dict[str, Any]:
    request = stored.payload.get("request") or {}
    messages = request.get("messages") or (stored.payload.get("upstream") or {}).get("messages") or []
    items = [_store_message(stored.id, i, m) for i, m in enumerate(messages) if isinstance(m, dict)]
    if query.order == "desc":
        items.reverse()
    if query.after is not None:
        ids = [m["id"] for m in items]
        items = items[ids.index(query.after) + 1 :] if query.after in ids else []
    chosen = items[: query.limit]
    return {
        "object": "list",
        "data": chosen,
        "first_id": chosen[0]["id"] if chosen else None,
        "last_id": chosen[-1]["id"] if chosen else None,
        "has_more": len(items) > query.limit,
    }


def _store_message(completion_id: str, index: int, message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    parts = content if isinstance(content, list) else None
    text = content if isinstance(content, str) else None
    if parts is not None:
        text = "".join(p.get("text", "") for p in parts if isinstance(p, dict) and p.get("type") == "text")
    out = {
        "id": f"{completion_id}-{index}",
        "role": message.get("role"),
        "content": text,
        "content_parts": parts,
    }
    for key in ("name", "tool_calls", "tool_call_id", "refusal"):
        if key in message:
            out[key] = message[key]
    return out


async def _stored(request: Request, call: Call, completion_id: str) -> StoredCall:
    stored = await asyncio.to_thread(traffic_of(request).get, _who(call), completion_id, KIND)
    if stored is None:
        raise _not_found(completion_id)
    return stored


def _who(call: Call) -> Principal:
    assert call.principal is not None
    return call.principal


def _not_found(completion_id: str) -> NotFound:
    return NotFound(
        f"no stored chat completion {completion_id!r} for this key (created with `store: true`?)",
        param="completion_id",
        code="not_found",
    )
