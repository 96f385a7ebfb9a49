"""Small helpers shared by the HTTP routers: the app's parts, the request's call, the body."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import orjson
from fastapi import Request

from gateway.db.outage import database_unavailable
from gateway.errors import InvalidJSON, OpsgateError, ServerCut
from gateway.evaluation.target import EVAL_HEADER
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
    run = request.headers.get(EVAL_HEADER)
    if run:  # evaluator traffic: the log row says which run, and online evaluation leaves it alone
        call.extra["eval_run"] = run[:64]
    token = tracing.start_request(call, request.headers)
    task = asyncio.current_task()
    if task is not None:
        gateway.calls.add(task)  # cut at shutdown if still running after the grace period
    try:
        gateway.authenticate(call, authorization or request.headers.get("authorization"))
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


async def read_json(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        raise InvalidJSON("the request body is empty; send a JSON object")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        reason = str(exc).split(":", 1)[0]
        raise InvalidJSON(f"the request body is not valid JSON ({reason}); send a UTF-8 JSON object") from exc
