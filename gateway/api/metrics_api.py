"""Prometheus exposition: `/metrics`, behind a key unless `metrics.require_key` is false.

Prometheus scrapes with a bearer token (`authorization: {credentials_file: ...}` in its scrape config)
of a key with the `metrics` role (or an admin key); see docs/operations.md.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.api.openapi_spec import error_responses
from gateway.errors import AuthenticationFailed, PermissionDenied

router = APIRouter(tags=["monitoring"])
METRICS_ROLES = ("metrics", "admin")


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=PlainTextResponse,
    responses={
        200: {
            "description": "Prometheus text exposition format 0.0.4.",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        **error_responses(401, 403),  # unless metrics.require_key is false
    },
)
async def metrics(request: Request) -> Response:
    parts = request.app.state.parts
    if parts.config.metrics.require_key:
        _check_key(request)
    return Response(parts.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def _check_key(request: Request) -> None:
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed(
            "/metrics needs a key: send 'Authorization: Bearer <key>' with a key that has the metrics role"
            " (`opsgate keys create --role metrics`), or set metrics.require_key: false"
        )
    principal = request.app.state.parts.catalog.principal(token.strip())
    if principal is None:
        raise AuthenticationFailed("invalid API key: it is unknown or was revoked")
    if not principal.has_role(*METRICS_ROLES):
        raise PermissionDenied("/metrics needs a key with the metrics or admin role")
