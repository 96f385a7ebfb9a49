"""Classic ML endpoints: thin HTTP around `gateway.ml.service.MLService`.

    POST /v1/ml/{name}/predict       {"records": [{col: value}], "explain": false}
    POST /v1/ml/{name}/invocations   MLflow's scoring protocol (dataframe_split, dataframe_records,
                                     instances, inputs; or text/csv) -> {"predictions": [...]}
    POST /v1/ml/{name}/feedback      {"prediction_id": ..., "label": ...} or {"feedback": [...]}
    GET  /v1/ml                      models this key may call;  GET /v1/ml/{name}: one model's card
    GET  /admin/ml/{name}/monitor    drift, data quality, accuracy, fairness per version (?version=)
    POST /admin/ml/{name}/monitor    the same, judged now: reports stored, alerts and retraining fired
    GET  /admin/ml/{name}/importance global feature importance of a version (SHAP)
    GET  /admin/ml/{name}/retrain/{run_id}   a retraining run's status (its output is never returned)
`{name}` takes a selector like any artifact reference: `churn`, `churn@production`, `churn@3`; an
application key reaches only approved versions (a protected alias points at them; gateway/flow/access.py).
Prediction ids are `<x-opsgate-request-id>:<row index>`. Every request writes exactly one log row.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.api.deps import opened_call
from gateway.api.openapi_spec import (
    ML_ERRORS,
    FeedbackAccepted,
    MLflowPredictions,
    MLModelCard,
    MLModelList,
    Predictions,
    PredictRequest,
    json_body,
    responses,
)
from gateway.errors import InvalidFields, NotFound, OpsgateError, PermissionDenied
from gateway.flow.access import CANDIDATE_ROLES, granted
from gateway.flow.call import Call
from gateway.keys import Principal
from gateway.ml import protocol
from gateway.ml.errors import ExplanationFailed, ModelUnavailable
from gateway.ml.model import ServedModel
from gateway.ml.service import MLService, Prediction
from gateway.registry.store import VersionRecord

router = APIRouter(tags=["ml"])
MONITOR_ROLES = ("admin", "approver", "prompt-engineer")
MAX_FEEDBACK = 10_000


def _json(data: Any, status: int = 200) -> Response:
    return Response(
        orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type="application/json",
    )


def ml_of(request: Request) -> MLService:
    return cast(MLService, request.app.state.ml)


async def _body(request: Request) -> bytes:
    return await request.body()


Handler = Callable[[Call], Awaitable[Response]]

_ROWS = {"type": "array", "items": {"anyOf": [{"type": "object"}, {"type": "array"}]}}
# MLflow's scoring protocol (gateway/ml/protocol.py): exactly one of the four keys, and optional params
MLFLOW_BODY: dict[str, Any] = {
    "type": "object",
    "properties": {
        "dataframe_split": {
            "type": "object",
            "required": ["data"],
            "properties": {"columns": {"type": "array", "items": {"type": "string"}}, "data": _ROWS},
        },
        "dataframe_records": {"type": "array", "items": {"type": "object"}},
        "instances": _ROWS,
        "inputs": {"anyOf": [{"type": "object", "additionalProperties": {"type": "array"}}, _ROWS]},
        "params": {"type": "object"},
    },
    "oneOf": [{"required": [k]} for k in protocol.MLFLOW_KEYS],
    "additionalProperties": False,
}
_FEEDBACK_ITEM = {
    "type": "object",
    "required": ["prediction_id", "label"],
    "properties": {"prediction_id": {"type": ["string", "integer"]}, "label": {}},
}
FEEDBACK_BODY: dict[str, Any] = {
    "anyOf": [
        _FEEDBACK_ITEM,
        {
            "type": "object",
            "required": ["feedback"],
            "properties": {
                "feedback": {
                    "type": "array",
                    "items": _FEEDBACK_ITEM,
                    "minItems": 1,
                    "maxItems": MAX_FEEDBACK,
                }
            },
        },
    ]
}


async def _logged(request: Request, route: str, handler: Handler) -> Response:
    """Authenticate, run the route, and write exactly one log row whatever happens, as every model API
    does (`opened_call`): the error's status for an OpsgateError, 503 for a database outage or a call the
    gateway stopped at shutdown, 499 for a client that left, 500 for anything else (the middleware renders
    the same message, no traceback)."""
    async with opened_call(request, route) as call:
        return await handler(call)


@router.post(
    "/v1/ml/{name}/predict",
    summary="Score rows with a classic model",
    responses=responses(Predictions, *ML_ERRORS),
    openapi_extra=json_body(PredictRequest),
)
async def predict(request: Request, name: str) -> Response:
    ml = ml_of(request)

    async def handle(call: Call) -> Response:
        raw = await _body(request)
        data = protocol.loads_or_none(raw)
        record = ml.resolve(call, name, user=protocol.end_user(data))
        request.state.versions = call.versions_header
        rows, explain = protocol.predict_rows(data if data is not None else protocol.loads(raw))
        result = await ml.predict(call, record, rows, explain=explain)
        return _json(_predict_body(result))

    return await _logged(request, "/v1/ml/{name}/predict", handle)


def _predict_body(result: Prediction) -> dict[str, Any]:
    served, outputs = result.served, result.outputs
    predictions = []
    for i, pid in enumerate(result.ids):
        item = {"id": pid, **outputs.row(i, served.classes)}
        if result.explanations is not None:
            item["explanation"] = result.explanations[i]
        predictions.append(item)
    body: dict[str, Any] = {
        "model": served.name,
        "version": served.version,
        "ref": served.ref,
        "predictions": predictions,
    }
    if result.violations:
        body["violations"] = [v.as_dict() for v in result.violations[:100]]
    return body


@router.post(
    "/v1/ml/{name}/invocations",
    summary="MLflow scoring protocol",
    responses=responses(MLflowPredictions, *ML_ERRORS),
    openapi_extra=json_body(schema=MLFLOW_BODY, others={"text/csv": {"schema": {"type": "string"}}}),
)
async def invocations(request: Request, name: str) -> Response:
    ml = ml_of(request)

    async def handle(call: Call) -> Response:
        record = ml.resolve(call, name)
        request.state.versions = call.versions_header
        spec = ml.spec(record)
        raw = await _body(request)
        content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if content_type == "text/csv":
            rows = protocol.csv_rows(raw, spec)
        else:
            rows = protocol.mlflow_rows(protocol.loads(raw), spec)
        result = await ml.predict(call, record, rows)
        return _json({"predictions": result.outputs.plain()})

    return await _logged(request, "/v1/ml/{name}/invocations", handle)


@router.post(
    "/v1/ml/{name}/feedback",
    summary="Attach ground truth to predictions",
    responses=responses(FeedbackAccepted, *ML_ERRORS),
    openapi_extra=json_body(schema=FEEDBACK_BODY),
)
async def feedback(request: Request, name: str) -> Response:
    ml = ml_of(request)

    async def handle(call: Call) -> Response:
        items = _feedback_items(protocol.loads(await _body(request)))
        return _json({"accepted": await ml.feedback(call, name, items)})

    return await _logged(request, "/v1/ml/{name}/feedback", handle)


def _feedback_items(data: Any) -> list[dict[str, Any]]:
    if isinstance(data, dict) and "feedback" in data:
        items = data["feedback"]
        if not isinstance(items, list) or not items:
            raise InvalidFields(
                "feedback: must be a non-empty list of {prediction_id, label}", param="feedback"
            )
    else:
        items = [data]
    if len(items) > MAX_FEEDBACK:
        raise InvalidFields(
            f"feedback: at most {MAX_FEEDBACK} items per request (this one has {len(items)}); split it",
            param="feedback",
        )
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "prediction_id" not in item or "label" not in item:
            raise InvalidFields(
                f"feedback[{i}]: needs prediction_id and label",
                param=f"feedback[{i}]",
                code="invalid_feedback",
            )
        if not isinstance(item["prediction_id"], str | int) or isinstance(item["prediction_id"], bool):
            raise InvalidFields(
                f"feedback[{i}].prediction_id: must be a prediction id string ('<request id>:<row>')",
                param=f"feedback[{i}].prediction_id",
                code="invalid_feedback",
            )
    return cast(list[dict[str, Any]], items)


@router.get("/v1/ml", summary="Models this key may call", responses=responses(MLModelList, 401, 503))
async def list_models(request: Request) -> Response:
    ml = ml_of(request)

    async def handle(call: Call) -> Response:
        principal = call.principal
        assert principal is not None
        cards = [_card(ml, principal, n) for n in ml.catalog.names("model") if principal.may_call("model", n)]
        return _json({"object": "list", "data": [c for c in cards if c is not None]})

    return await _logged(request, "/v1/ml", handle)


@router.get(
    "/v1/ml/{name}",
    summary="One model's card: version, schema, output",
    responses=responses(MLModelCard, *ML_ERRORS),
)
async def get_model(request: Request, name: str) -> Response:
    ml = ml_of(request)

    async def handle(call: Call) -> Response:
        record = ml.resolve(call, name)
        assert call.principal is not None
        return _json(_card_for(ml, call.principal, record))

    return await _logged(request, "/v1/ml/{name}", handle)


def _card(ml: MLService, principal: Principal, name: str) -> dict[str, Any] | None:
    try:
        record = ml.catalog.resolve("model", name)
        return _card_for(ml, principal, record)
    except (NotFound, ModelUnavailable):  # no production version, or one this gateway cannot read
        return None


def _card_for(ml: MLService, principal: Principal, record: VersionRecord) -> dict[str, Any]:
    spec = ml.spec(record)
    aliases = ml.catalog.aliases_of("model", record.name)
    return {
        "id": record.name,
        "object": "model",
        "opsgate": {
            "kind": "model",
            "version": record.version,
            "ref": record.ref,
            # only the aliases this key may name (an app key's card does not point at candidates)
            "aliases": {a: v for a, v in aliases.items() if _may_name(ml, principal, record, a, v)},
            "task": spec.task,
            "description": spec.description,
            "inputs": {k: v.model_dump(exclude_defaults=True) for k, v in spec.inputs.items()},
            "labels": spec.output.labels,
        },
    }


def _may_name(ml: MLService, principal: Principal, record: VersionRecord, alias: str, version: int) -> bool:
    """The rule of gateway/flow/access.py, as a yes or no for one alias."""
    target = ml.catalog.snapshot.records.get(("model", record.name, version))
    if target is None:
        return False
    return (
        ml.approved(target)
        or principal.has_role(*CANDIDATE_ROLES)
        or granted(principal, "model", record.name, alias)
    )


# -- admin: monitoring figures ------------------------------------------------------------------------


async def _admin_model(ml: MLService, call: Call, name: str, version: str | None) -> ServedModel:
    assert call.principal is not None
    if not call.principal.has_role(*MONITOR_ROLES):
        raise PermissionDenied("monitoring figures need the role admin, approver or prompt-engineer")
    record = ml.resolve(call, f"{name}@{version}" if version else name)
    return await ml.served(record)


@router.get(
    "/admin/ml/{name}/monitor",
    summary="Drift, data quality, accuracy, fairness of a version",
    responses=responses(None, *ML_ERRORS),
)
async def monitor_figures(request: Request, name: str, version: str | None = None) -> Response:
    from gateway.ml.monitor import figures

    ml = ml_of(request)

    async def handle(call: Call) -> Response:
        served = await _admin_model(ml, call, name, version)
        await ml.writer.flush()
        return _json(await asyncio.to_thread(figures, ml.engine, served))

    return await _logged(request, "/admin/ml/{name}/monitor", handle)


@router.post(
    "/admin/ml/{name}/monitor",
    summary="Judge a version now: store reports, alert, trigger retraining",
    responses=responses(None, *ML_ERRORS),
)
async def monitor_check(request: Request, name: str, version: str | None = None) -> Response:
    ml = ml_of(request)

    async def handle(call: Call) -> Response:
        return _json(await ml.check(await _admin_model(ml, call, name, version)))

    return await _logged(request, "/admin/ml/{name}/monitor", handle)


@router.get(
    "/admin/ml/{name}/retrain/{run_id}",
    summary="A retraining run's status (never the command's output)",
    responses=responses(None, *ML_ERRORS),
)
async def retrain_run(request: Request, name: str, run_id: str) -> Response:
    ml = ml_of(request)

    async def handle(call: Call) -> Response:
        assert call.principal is not None
        if not call.principal.has_role(*MONITOR_ROLES):
            raise PermissionDenied("retraining runs need the role admin, approver or prompt-engineer")
        found = await asyncio.to_thread(ml.monitor.runner.status, name, run_id)
        if found is None:
            raise NotFound(f"model:{name} has no retraining run {run_id!r}", code="run_not_found")
        return _json(found)

    return await _logged(request, "/admin/ml/{name}/retrain/{run_id}", handle)


@router.get(
    "/admin/ml/{name}/importance",
    summary="Global feature importance (mean |SHAP|) of a version",
    responses=responses(None, *ML_ERRORS),
)
async def importance(request: Request, name: str, version: str | None = None) -> Response:
    ml = ml_of(request)

    async def handle(call: Call) -> Response:
        served = await _admin_model(ml, call, name, version)
        if served.spec.reference is None:
            raise InvalidFields(
                f"model:{served.name}@{served.version} has no reference dataset; importance needs one",
                code="no_reference",
            )
        try:
            found = await asyncio.to_thread(ml.explainer(served).global_importance)
        except OpsgateError:
            raise
        except Exception as exc:
            raise ExplanationFailed(
                f"{served.ref}: global importance failed ({type(exc).__name__}: {str(exc)[:300]})"
            ) from exc
        return _json({"ref": served.ref, **found})

    return await _logged(request, "/admin/ml/{name}/importance", handle)
