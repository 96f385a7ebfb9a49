"""Admin API for rollouts under /admin/rollouts: start, list, status, check now, stop."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import ConfigDict, Field

from gateway.api.admin import Caller, Reader, clean_inputs
from gateway.api.deps import gateway_of
from gateway.api.openapi_spec import ADMIN_ERRORS, error_responses
from gateway.api_requests import StrictBody
from gateway.flow.shadow import ShadowRunner
from gateway.registry.promotion import PromotionService
from gateway.rollouts.service import RolloutService, RolloutSpec

router = APIRouter(
    prefix="/admin/rollouts",
    tags=["admin"],
    responses=error_responses(*ADMIN_ERRORS),
    dependencies=[Depends(clean_inputs)],
)


def rollouts_of(request: Request) -> RolloutService:
    """The rollout service over the app's database and promotion rules (the admin API and the dashboard)."""
    parts = request.app.state.parts
    return RolloutService(parts.engine, PromotionService(parts.engine, parts.config.governance))


class StopRequest(StrictBody):
    model_config = ConfigDict(strict=True, extra="forbid")
    reason: str = Field(min_length=1, max_length=2000)


class RolloutBody(StrictBody, RolloutSpec):
    """A rollout as the admin API takes it: strictly typed (no coercion of "0.5" to 0.5)."""

    model_config = ConfigDict(strict=True, extra="forbid")


@router.post("", status_code=201, summary="Start a rollout (a promotion request on a protected alias)")
def start(request: Request, caller: Caller, body: RolloutBody) -> dict[str, Any]:
    return rollouts_of(request).start(caller, body)


@router.get("", summary="List rollouts, newest first")
def list_rollouts(request: Request, _: Reader, live: bool = False) -> list[dict[str, Any]]:
    return rollouts_of(request).list_rollouts(live_only=live)


@router.get(
    "/panel", summary="Dashboard panel data: live and recent rollouts, share now, last check per metric"
)
def panel(request: Request, _: Reader, limit: Annotated[int, Query(ge=0, le=200)] = 20) -> dict[str, Any]:
    out = rollouts_of(request).panel(limit=limit)
    for item in out["rollouts"]:
        if item["mode"] == "shadow":
            item["shadow"] = _shadows(request, item["target"].split(":", 1)[0]).stats_for(item["id"])
    return out


@router.get("/{rollout_id}", summary="One rollout with its last check (figures, sample sizes, test)")
def status(request: Request, _: Reader, rollout_id: str) -> dict[str, Any]:
    return _with_shadow(request, rollouts_of(request).get(rollout_id))


def _with_shadow(request: Request, record: dict[str, Any]) -> dict[str, Any]:
    """A shadow rollout's calls as this replica counts them: sampled, started, dropped (the bound
    `rollouts.shadow_max_in_flight` was reached), failed, in flight."""
    if record["mode"] == "shadow":
        record["shadow"] = _shadows(request, record["kind"]).stats_for(record["id"])
    return record


def _shadows(request: Request, kind: str) -> ShadowRunner:
    """Where this replica runs a kind's shadow calls: classic models score in the ML service."""
    if kind == "model":
        runner: ShadowRunner = request.app.state.ml.shadows
        return runner
    return gateway_of(request).shadows


@router.post("/{rollout_id}/check", summary="Evaluate now (the background evaluator does it every interval)")
def check(request: Request, caller: Reader, rollout_id: str) -> dict[str, Any]:
    service = rollouts_of(request)
    service.get(rollout_id)  # 404 first
    return service.check(rollout_id)


@router.post("/{rollout_id}/stop", summary="Stop: the candidate serves no more traffic")
def stop(request: Request, caller: Caller, rollout_id: str, body: StopRequest) -> dict[str, Any]:
    return rollouts_of(request).stop(caller, rollout_id, reason=body.reason)
