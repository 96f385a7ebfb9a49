"""OpenAI's conversation objects (platform.openai.com/docs/api-reference/conversations): request bodies,
the stored items' shape, and the items as chat messages (what a response in the conversation continues
from). The routes are gateway/api/conversations.py; a conversation is a record of the traffic store.

Items are the Responses API's input items, kept as OpenAI lists them: `message` (content parts
`input_text` for user, system and developer messages, `output_text` for assistant ones), `function_call`
and `function_call_output`, each with an id and `status: completed`. Other item types are a 400 naming
the item, as on `/v1/responses`.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from gateway.errors import InvalidRequest
from gateway.shapes import Json
from gateway.surfaces.common import Strict, parse
from gateway.surfaces.responses import input_messages

MAX_NEW_ITEMS = 20  # OpenAI's limit on the items of one create or append


class ConversationCreate(Strict):
    items: list[dict[str, Any]] | None = Field(None, max_length=MAX_NEW_ITEMS)
    metadata: dict[str, str] | None = None


class ConversationUpdate(Strict):
    metadata: dict[str, str]


class ItemsCreate(Strict):
    items: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_NEW_ITEMS)


def parse_create(data: Any) -> ConversationCreate:
    request = parse(ConversationCreate, data)
    check_metadata(request.metadata)
    return request


def parse_update(data: Any) -> ConversationUpdate:
    request = parse(ConversationUpdate, data)
    check_metadata(request.metadata)
    return request


def parse_items(data: Any) -> ItemsCreate:
    return parse(ItemsCreate, data)


def check_metadata(metadata: dict[str, str] | None) -> None:
    if metadata is None:
        return
    if len(metadata) > 16:
        raise InvalidRequest("metadata: at most 16 pairs", param="metadata", code="invalid_value")
    for key, value in metadata.items():
        if len(key) > 64 or len(value) > 512:
            raise InvalidRequest(
                f"metadata.{key[:64]}: keys are at most 64 characters, values at most 512",
                param=f"metadata.{key[:64]}",
                code="invalid_value",
            )


def conversation_object(conversation_id: str, created_at: int, metadata: dict[str, str]) -> Json:
    return {"id": conversation_id, "object": "conversation", "created_at": created_at, "metadata": metadata}


def stored_items(raw: list[Json], prefix: str, param: str = "items") -> list[Json]:
    """New items as the conversation keeps them; ids `<type prefix>_<prefix>_<i>`. Checked as the
    Responses API checks input items (a 400 naming `items.<i>...` otherwise)."""
    try:
        input_messages(raw)
    except InvalidRequest as exc:
        where = (exc.param or "").replace("input", param, 1)
        raise InvalidRequest(exc.message.replace("input", param, 1), param=where, code=exc.code) from exc
    out: list[Json] = []
    for i, item in enumerate(raw):
        kind = item.get("type", "message")
        if kind == "message":
            role = item["role"]
            part = "output_text" if role == "assistant" else "input_text"
            content = item.get("content")
            given: list[Json] = (
                [{"type": part, "text": content}] if isinstance(content, str) else list(content or [])
            )
            texts = ("input_text", "output_text", "text")
            parts = [p | {"type": part} if p.get("type") in texts else dict(p) for p in given]
            if part == "output_text":
                parts = [p | {"annotations": p.get("annotations", [])} for p in parts]
            parts = [
                p | {"detail": p.get("detail", "auto")} if p["type"] == "input_image" else p for p in parts
            ]
            out.append({"id": f"msg_{prefix}_{i}", "type": "message", "status": "completed", "role": role,
                        "content": parts})  # fmt: skip
        elif kind == "function_call":
            out.append({"id": f"fc_{prefix}_{i}", "type": "function_call", "status": "completed",
                        "call_id": item["call_id"], "name": item["name"], "arguments": item["arguments"]})  # fmt: skip
        else:  # function_call_output (input_messages refused every other type)
            output = item.get("output")
            out.append({"id": f"fco_{prefix}_{i}", "type": "function_call_output", "status": "completed",
                        "call_id": item["call_id"], "output": output})  # fmt: skip
    return out


def chat_messages(items: list[Json]) -> list[Json]:
    """A conversation's items as the chat messages a response in it continues from."""
    return input_messages(items)


def items_page(items: list[Json], *, after: str | None, limit: int, order: str) -> Json:
    """A page of items, OpenAI's list shape (`after` an item id; an unknown one gives an empty page)."""
    ordered = list(reversed(items)) if order == "desc" else list(items)
    if after is not None:
        ids = [item["id"] for item in ordered]
        ordered = ordered[ids.index(after) + 1 :] if after in ids else []
    chosen = ordered[:limit]
    return list_body(chosen, has_more=len(ordered) > limit)


def list_body(items: list[Json], *, has_more: bool = False) -> Json:
    return {
        "object": "list",
        "data": items,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": has_more,
    }
