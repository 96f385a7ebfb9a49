"""OpenAI's conversations API: create, retrieve, update, delete a conversation; list, append, retrieve and
delete its items. A conversation is a record of the traffic store (kind `conversation`, its items in the
payload), owned by the principal whose key made it exactly like a stored response: another principal's
id is a 404, as for an id that never existed (an admin sees all). `/v1/responses` with `conversation`
continues it and appends the turn's input and output items (gateway/api/responses.py).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy.exc import SQLAlchemyError

from gateway.api.deps import opened_call, read_json
from gateway.api.openai import _json
from gateway.api.openapi_spec import CALL_ERRORS, Conversation, Deleted, ItemList, error_responses
from gateway.api.stored import ListQuery, traffic_of
from gateway.db.outage import database_unavailable
from gateway.errors import InvalidRequest, NotFound
from gateway.flow.call import Call
from gateway.keys import Principal
from gateway.shapes import Json
from gateway.surfaces import conversations as shapes
from gateway.traffic.store import PayloadTooLarge, StoredCall, TrafficStore

router = APIRouter(prefix="/v1", tags=["conversations"], responses=error_responses(*CALL_ERRORS))
KIND = "conversation"


def _body(model: Any) -> dict[str, Any]:
    return {"requestBody": {"content": {"application/json": {"schema": model.model_json_schema()}}}}


def _who(call: Call) -> Principal:
    assert call.principal is not None
    return call.principal


def _object(stored: StoredCall) -> Json:
    created = int(stored.payload.get("created_at") or stored.created_at.timestamp())
    return shapes.conversation_object(stored.id, created, stored.metadata)


def not_found(conversation_id: str, param: str = "conversation_id") -> NotFound:
    return NotFound(f"no conversation {conversation_id!r} for this key", param=param, code="not_found")


def too_large(exc: PayloadTooLarge) -> InvalidRequest:
    return InvalidRequest(
        f"the conversation would be {exc.size} bytes, over the limit of {exc.limit}"
        " (traffic.max_payload_bytes); start a new conversation",
        param="items",
        code="conversation_too_large",
    )


async def load(store: TrafficStore, who: Principal, conversation_id: str, param: str) -> StoredCall:
    stored = await asyncio.to_thread(store.get, who, conversation_id, KIND)
    if stored is None:
        raise not_found(conversation_id, param)
    return stored


async def change_items(
    store: TrafficStore, who: Principal, conversation_id: str, change: Callable[[list[Json]], list[Json]]
) -> StoredCall:
    """Change a conversation's items in one transaction (404, or 400 when it would grow too large)."""

    def apply(payload: dict[str, Any]) -> dict[str, Any]:
        return payload | {"items": change(list(payload.get("items") or []))}

    try:
        stored = await asyncio.to_thread(store.change_payload, who, conversation_id, KIND, apply)
    except PayloadTooLarge as exc:
        raise too_large(exc) from None
    except SQLAlchemyError as exc:  # an OpsgateError (503) for callers that go on without the change
        raise database_unavailable(exc) or exc from exc
    if stored is None:
        raise not_found(conversation_id)
    return stored


@router.post(
    "/conversations",
    summary="Create a conversation",
    response_model=Conversation,
    openapi_extra=_body(shapes.ConversationCreate),
)
async def create_conversation(request: Request) -> Response:
    async with opened_call(request, "/v1/conversations") as call:
        body = shapes.parse_create(await read_json(request))
        who = _who(call)
        conversation_id = "conv_" + secrets.token_hex(24)
        items = shapes.stored_items(body.items or [], call.request_id.removeprefix("req_"))
        created = int(call.ts.timestamp())
        stored = StoredCall(
            conversation_id, call.request_id, KIND, call.ts, who.principal, who.key_id, None,
            dict(body.metadata or {}), {"items": items, "created_at": created},
        )  # fmt: skip
        store = traffic_of(request)
        if not await asyncio.to_thread(store.save, stored):
            raise too_large(
                PayloadTooLarge(store.encoded_size(stored.payload), store.config.max_payload_bytes)
            )
        call.extra["traffic"] = {"id": conversation_id, "stored": True}
    return _json(shapes.conversation_object(conversation_id, created, stored.metadata))


@router.get("/conversations/{conversation_id}", summary="Get a conversation", response_model=Conversation)
async def get_conversation(request: Request, conversation_id: str) -> Response:
    async with opened_call(request, "/v1/conversations/{id}") as call:
        stored = await load(traffic_of(request), _who(call), conversation_id, "conversation_id")
    return _json(_object(stored))


@router.post(
    "/conversations/{conversation_id}",
    summary="Update a conversation's metadata",
    response_model=Conversation,
)
async def update_conversation(request: Request, conversation_id: str) -> Response:
    async with opened_call(request, "/v1/conversations/{id}:update") as call:
        body = shapes.parse_update(await read_json(request))
        stored = await asyncio.to_thread(
            traffic_of(request).update_metadata, _who(call), conversation_id, KIND, body.metadata
        )
        if stored is None:
            raise not_found(conversation_id)
    return _json(_object(stored))


@router.delete("/conversations/{conversation_id}", summary="Delete a conversation", response_model=Deleted)
async def delete_conversation(request: Request, conversation_id: str) -> Response:
    async with opened_call(request, "/v1/conversations/{id}:delete") as call:
        deleted = await asyncio.to_thread(traffic_of(request).delete, _who(call), conversation_id, KIND)
        if not deleted:
            raise not_found(conversation_id)
    return _json({"id": conversation_id, "object": "conversation.deleted", "deleted": True})


@router.get(
    "/conversations/{conversation_id}/items",
    summary="List a conversation's items",
    response_model=ItemList,
)
async def list_items(request: Request, conversation_id: str) -> Response:
    async with opened_call(request, "/v1/conversations/{id}/items") as call:
        query = ListQuery.of(request, filters=False, default_order="desc")
        stored = await load(traffic_of(request), _who(call), conversation_id, "conversation_id")
        data = shapes.items_page(
            list(stored.payload.get("items") or []), after=query.after, limit=query.limit, order=query.order
        )
    return _json(data)


@router.post(
    "/conversations/{conversation_id}/items",
    summary="Add items to a conversation",
    response_model=ItemList,
    openapi_extra=_body(shapes.ItemsCreate),
)
async def create_items(request: Request, conversation_id: str) -> Response:
    async with opened_call(request, "/v1/conversations/{id}/items:create") as call:
        body = shapes.parse_items(await read_json(request))
        added = shapes.stored_items(body.items, call.request_id.removeprefix("req_"))
        await change_items(traffic_of(request), _who(call), conversation_id, lambda items: items + added)
    return _json(shapes.list_body(added))


@router.get(
    "/conversations/{conversation_id}/items/{item_id}",
    summary="Get one item of a conversation",
    response_model=dict[str, Any],
)
async def get_item(request: Request, conversation_id: str, item_id: str) -> Response:
    async with opened_call(request, "/v1/conversations/{id}/items/{item_id}") as call:
        stored = await load(traffic_of(request), _who(call), conversation_id, "conversation_id")
        found = [item for item in stored.payload.get("items") or () if item.get("id") == item_id]
        if not found:
            raise NotFound(f"no item {item_id!r} in conversation {conversation_id!r}", param="item_id")
    return _json(found[0])


@router.delete(
    "/conversations/{conversation_id}/items/{item_id}",
    summary="Delete one item of a conversation",
    response_model=Conversation,
)
async def delete_item(request: Request, conversation_id: str, item_id: str) -> Response:
    async with opened_call(request, "/v1/conversations/{id}/items/{item_id}:delete") as call:
        missing = False

        def without(items: list[Json]) -> list[Json]:
            nonlocal missing
            kept = [item for item in items if item.get("id") != item_id]
            missing = len(kept) == len(items)
            return kept

        stored = await change_items(traffic_of(request), _who(call), conversation_id, without)
        if missing:
            raise NotFound(f"no item {item_id!r} in conversation {conversation_id!r}", param="item_id")
    return _json(_object(stored))
