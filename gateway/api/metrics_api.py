"""Prometheus exposition."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

router = APIRouter(tags=["monitoring"])


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    parts = request.app.state.parts
    return Response(parts.metrics.render(), media_type=CONTENT_TYPE_LATEST)
