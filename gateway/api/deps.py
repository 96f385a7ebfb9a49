"""Small helpers shared by the HTTP routers: the app's parts, the request's call record, the body."""

from __future__ import annotations

from typing import Any, cast

import orjson
from fastapi import Request

from gateway.errors import InvalidJSON
from gateway.serving import Call, Gateway


def gateway_of(request: Request) -> Gateway:
    return cast(Gateway, request.app.state.gateway)


def call_for(request: Request, route: str) -> Call:
    return Call(request_id=request.state.request_id, route=route)


async def read_json(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        raise InvalidJSON("the request body is empty; send a JSON object")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        reason = str(exc).split(":", 1)[0]
        raise InvalidJSON(f"the request body is not valid JSON ({reason}); send a UTF-8 JSON object") from exc
