"""Liveness and readiness."""

from __future__ import annotations

import asyncio

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import text

from gateway.api.openapi_spec import READINESS, Health, responses
from gateway.retrieval.readiness import check_indexes

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers", responses=responses(Health))
async def healthz() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


@router.get(
    "/readyz",
    summary="Readiness: database reachable, caches and aliased models loaded, log writer running",
    responses=READINESS,
)
async def readyz(request: Request) -> Response:
    checks: dict[str, object] = {"started": bool(request.app.state.ready)}
    parts = getattr(request.app.state, "parts", None)
    if parts is not None:
        try:
            await asyncio.wait_for(asyncio.to_thread(_ping, parts.engine), timeout=2)
            checks["database"] = True
        except Exception as exc:  # noqa: BLE001 - any failure means not ready; say which
            checks["database"] = False
            checks["database_error"] = type(exc).__name__
        checks["catalog_generation"] = parts.catalog.snapshot.generation
        checks["routers"] = len(parts.catalog.names("router"))
        checks["prompts"] = len(parts.catalog.names("prompt"))
        checks["request_log"] = {
            "running": parts.writer.running,
            "backlog": parts.writer.backlog,
            "written": parts.writer.stats.written,
            "dropped": parts.writer.stats.dropped,
            "failed_batches": parts.writer.stats.failed_batches,
            "last_error": parts.writer.stats.last_error,
        }
    indexes_ready = await check_indexes(parts, checks) if parts is not None else False
    ml = getattr(request.app.state, "ml", None)
    if ml is not None:
        checks["models"] = ml.readiness()  # ready once the models aliases point at have loaded (or failed)
    ok = bool(
        checks["started"]
        and checks.get("database")
        and parts is not None
        and parts.writer.running
        and (ml is None or ml.warming == 0)
        and indexes_ready
    )
    body = {"status": "ready" if ok else "not ready", "checks": checks}
    return Response(orjson.dumps(body), status_code=200 if ok else 503, media_type="application/json")


def _ping(engine: object) -> None:
    from sqlalchemy import Engine

    assert isinstance(engine, Engine)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
