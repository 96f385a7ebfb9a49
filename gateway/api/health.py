"""Liveness and readiness."""

from __future__ import annotations

import asyncio

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import text

from gateway.api.openapi_spec import READINESS, Health, responses
from gateway.db.outage import describe
from gateway.retrieval.readiness import check_indexes

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers", responses=responses(Health))
async def healthz() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


@router.get(
    "/readyz",
    summary="Readiness: can serve (caches and aliased models loaded, log writer running); a database or"
    " Redis outage is reported as degraded (200), not as not ready",
    responses=READINESS,
)
async def readyz(request: Request) -> Response:
    """Readiness means "can serve". Chat and embeddings are answered from memory (keys, aliases, policies)
    while the database is away, and their log rows wait in the spool; pulling every replica out at once
    would turn an outage of the database into an outage of the service. So a database or Redis outage
    answers 200 with `"status": "degraded"` and `"degraded": [...]` naming it, with the spool's size and
    age under `checks.request_log.spool`; 503 only when this replica cannot serve."""
    checks: dict[str, object] = {"started": bool(request.app.state.ready)}
    limits: dict[str, object] | None = None
    parts = getattr(request.app.state, "parts", None)
    if parts is not None:
        try:
            await asyncio.wait_for(asyncio.to_thread(_ping, parts.engine), timeout=2)
            checks["database"] = True
            outage = getattr(request.app.state, "database_outage", None)
            if outage is not None:  # the admin routes' outage (503s) is over: say so once
                outage.recovered()
        except Exception as exc:  # noqa: BLE001 - any failure is reported; serving goes on from memory
            checks["database"] = False
            checks["database_error"] = describe(exc)
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
            "database_up": parts.writer.database_up,
            "spool": parts.writer.spool_state(),
        }
        limits = parts.policy.store_state()
        checks["limit_store"] = limits
        if limits.get("backend") == "redis":
            checks["redis"] = limits
    indexes_ready = await check_indexes(parts, checks) if parts is not None else False
    ml = getattr(request.app.state, "ml", None)
    if ml is not None:
        checks["models"] = ml.readiness()  # ready once the models aliases point at have loaded (or failed)
    degraded = []
    if parts is not None and not (checks.get("database") and parts.writer.database_up):
        degraded.append("database")
    if limits is not None and limits.get("backend") == "redis" and not limits.get("up"):
        degraded.append("redis")
    ok = bool(
        checks["started"]
        and parts is not None
        and parts.writer.running
        and (ml is None or ml.warming == 0)
        and indexes_ready
    )
    status = ("degraded" if degraded else "ready") if ok else "not ready"
    body = {"status": status, "degraded": degraded, "checks": checks}
    return Response(orjson.dumps(body), status_code=200 if ok else 503, media_type="application/json")


def _ping(engine: object) -> None:
    from sqlalchemy import Engine

    assert isinstance(engine, Engine)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
