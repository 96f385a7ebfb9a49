"""Small helpers shared by the HTTP routers: the app's parts, the request's call, the body."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import orjson
from fastapi import Request

from gateway.db.outage import database_unavailable
from gateway.errors import InvalidJSON, InvalidRequest, OpsgateError, ServerCut
from gateway.evaluation.target import EVAL_HEADER
from gateway.flow.access import CANDIDATE_ROLES
from gateway.flow.call import Call
from gateway.flow.gateway import Gateway
from gateway.monitoring import tracing


def gateway_of(request: Request) -> Gateway:
    return cast(Gateway, request.app.state.gateway)


def call_for(request: Request, route: str) -> Call:
    return Call(request_id=request.state.request_id, route=route)


@asynccontextmanager
async def opened_call(
    request: Request, route: str, *, model: str | None = None, authorization: str | None = None
) -> AsyncIterator[Call]:
    """One request's call: authenticated on entry; on exit, whatever happened, its one log row is
    written (a stream's is written by its SSE writer once `call.stream_owner` is set) and the
    `x-opsgate-versions` header is set. Errors propagate to the app's error handlers unchanged.
    `authorization`: the key as another API presents it (Anthropic's x-api-key), as a bearer header."""
    gateway = gateway_of(request)
    call = call_for(request, route)
    call.model = model
    token = tracing.start_request(call, request.headers)
    task = asyncio.current_task()
    if task is not None:
        gateway.calls.add(task)  # cut at shutdown if still running after the grace period
    try:
        principal = gateway.authenticate(call, authorization or request.headers.get("authorization"))
        run = request.headers.get(EVAL_HEADER)
        # evaluator traffic (the log row says which run, online evaluation leaves it alone): an evaluator's
        # word only; an application key cannot take its traffic out of online evaluation with a header
        if run and principal.has_role(*CANDIDATE_ROLES):
            call.extra["eval_run"] = run[:64]
        yield call
    except OpsgateError as exc:
        gateway.finish(call, exc.status, exc)
        raise
    except asyncio.CancelledError:
        if gateway.cutting and task is not None and task.uncancel() == 0:  # our cut, and only ours
            cut = ServerCut(
                "the gateway is shutting down and stopped this request before it was answered; retry it"
            )
            gateway.finish(call, cut.status, cut)
            raise cut from None
        # the client went away while we worked on its request
        gateway.finish(call, 499, OpsgateError("the client left before the answer", code="client_closed"))
        raise
    except Exception as exc:  # a bug: the row says so, and the middleware answers a 500 with no traceback
        unavailable = database_unavailable(exc)  # an infrastructure fault is a 503 with Retry-After
        if unavailable is not None:
            gateway.finish(call, unavailable.status, unavailable)
            raise unavailable from exc
        error = OpsgateError(f"internal error ({type(exc).__name__}); quote request id {call.request_id}")
        gateway.finish(call, 500, error)
        raise
    else:
        if not call.streaming:
            gateway.finish(call, 200)
    finally:
        gateway.calls.discard(task)
        tracing.detach(token)
        request.state.versions = call.versions_header


# Levels of nesting a model API body may have. What the gateway sends on (the upstream body, the stored
# call) wraps the caller's values in a few more levels, and orjson writes at most 254: a body nested
# deeper than it could be sent was a 500 (a tool's `parameters`, a message's extra key, a tool input).
MAX_BODY_DEPTH = 128
_ORJSON_MAX_DEPTH = 254


async def read_json(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        raise InvalidJSON("the request body is empty; send a JSON object")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        reason = str(exc).split(":", 1)[0]
        raise InvalidJSON(f"the request body is not valid JSON ({reason}); send a UTF-8 JSON object") from exc
    if isinstance(data, dict):
        _check_lists(data, gateway_of(request).limits.requests.max_items)
    if raw.count(b"[") + raw.count(b"{") > MAX_BODY_DEPTH and _too_deep(data, MAX_BODY_DEPTH):
        items = data.items() if isinstance(data, dict) else ()
        field = next((str(k) for k, v in items if _too_deep(v, MAX_BODY_DEPTH - 1)), None)
        raise InvalidRequest(
            f"{field or 'the request body'}: JSON nested deeper than {MAX_BODY_DEPTH} levels",
            param=field,
            code="too_deep",
        )
    return data


def _check_lists(data: dict[str, Any], most: int) -> None:
    """400 naming a top-level list of objects (messages, input items) longer than `limits.requests`."""
    for name, value in data.items():
        if isinstance(value, list) and len(value) > most and isinstance(value[0], dict):
            raise InvalidRequest(
                f"{name} holds {len(value)} items; at most {most} per request (limits.requests.max_items)",
                param=name,
                code="too_many_items",
            )


def _too_deep(value: Any, depth: int) -> bool:
    """Whether `value` nests more than `depth` levels (orjson's writer counts them, at C speed)."""
    for _ in range(_ORJSON_MAX_DEPTH - depth):
        value = [value]
    try:
        orjson.dumps(value)
    except TypeError as exc:  # a parsed body holds nothing else orjson cannot write
        return "Recursion" in str(exc)
    return False
