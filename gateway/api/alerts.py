"""Admin API for alert rules under /admin/alerts: the rules in force and where each stands."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from gateway.api.admin import Reader, clean_inputs
from gateway.api.openapi_spec import ADMIN_ERRORS, error_responses

router = APIRouter(
    prefix="/admin/alerts",
    tags=["admin"],
    responses=error_responses(*ADMIN_ERRORS),
    dependencies=[Depends(clean_inputs)],
)


@router.get("", summary="Alert rules in force, each with its state (ok, pending, firing) per subject")
def list_alerts(request: Request, _: Reader) -> dict[str, Any]:
    states: dict[str, Any] = request.app.state.alerting.states()
    return states
