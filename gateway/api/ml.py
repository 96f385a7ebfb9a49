"""Classic ML endpoints: thin HTTP around `gateway.ml.service.MLService`.

    POST /v1/ml/{name}/predict       {"records": [{col: value}], "explain": false}
    POST /v1/ml/{name}/invocations   MLflow's scoring protocol (dataframe_split, dataframe_records,
                                     instances, inputs; or text/csv) -> {"predictions": [...]}
    POST /v1/ml/{name}/feedback      {"prediction_id": ..., "label": ...} or {"feedback": [...]}
    GET  /v1/ml                      models this key may call;  GET /v1/ml/{name}: one model's card
    GET  /admin/ml/{name}/monitor    drift, data quality, accuracy, fairness per version (?version=)
    POST /admin/ml/{name}/monitor    the same, judged now: reports stored, alerts and retraining fired
    GET  /admin/ml/{name}/importance global feature importance of a version (SHAP)
`{name}` takes a selector like any artifact reference: `churn`, `churn@production`, `churn@3`.
Prediction ids are `<x-opsgate-request-id>:<row index>`.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.api.deps import call_for, gateway_of
from gateway.errors import InvalidFields, NotFound, OpsgateError, PermissionDenied
from gateway.flow.call import Call
from gateway.flow.gateway import Gateway
from gateway.ml import protocol
from gateway.ml.service import MLService
from gateway.ml.spec import ModelSpec

router = APIRouter(tags=["ml"])
MONITOR_ROLES = ("admin", "approver", "prompt-engineer")


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


def _fail(gateway: Gateway, call: Call, request: Request, exc: OpsgateError) -> None:
    request.state.versions = call.versions_header
    gateway.finish(call, exc.status, exc)


@router.post("/v1/ml/{name}/predict", summary="Score rows with a classic model")
async def predict(request: Request, name: str) -> Response:
    gateway, ml = gateway_of(request), ml_of(request)
    call = call_for(request, "/v1/ml/{name}/predict")
    try:
        gateway.authenticate(call, request.headers.get("authorization"))
        record = ml.resolve(call, name)
        request.state.versions = call.versions_header
        rows, explain = protocol.predict_rows(protocol.loads(await _body(request)))
        result = await ml.predict(call, record, rows, explain=explain)
    except OpsgateError as exc:
        _fail(gateway, call, request, exc)
        raise
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
    gateway.finish(call, 200)
    return _json(body)


@router.post("/v1/ml/{name}/invocations", summary="MLflow scoring protocol")
async def invocations(request: Request, name: str) -> Response:
    gateway, ml = gateway_of(request), ml_of(request)
    call = call_for(request, "/v1/ml/{name}/invocations")
    try:
        gateway.authenticate(call, request.headers.get("authorization"))
        record = ml.resolve(call, name)
        request.state.versions = call.versions_header
        spec: ModelSpec = ml.catalog.spec_for(record, ModelSpec)
        raw = await _body(request)
        content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if content_type == "text/csv":
            rows = protocol.csv_rows(raw, spec)
        else:
            rows = protocol.mlflow_rows(protocol.loads(raw), spec)
        result = await ml.predict(call, record, rows)
    except OpsgateError as exc:
        _fail(gateway, call, request, exc)
        raise
    gateway.finish(call, 200)
    return _json({"predictions": result.outputs.plain()})


@router.post("/v1/ml/{name}/feedback", summary="Attach ground truth to predictions")
async def feedback(request: Request, name: str) -> Response:
    gateway, ml = gateway_of(request), ml_of(request)
    call = call_for(request, "/v1/ml/{name}/feedback")
    call.model = name
    try:
        gateway.authenticate(call, request.headers.get("authorization"))
        data = protocol.loads(await _body(request))
        items = _feedback_items(data)
        accepted = await ml.feedback(call, name, items)
    except OpsgateError as exc:
        _fail(gateway, call, request, exc)
        raise
    gateway.finish(call, 200)
    return _json({"accepted": accepted})


def _feedback_items(data: Any) -> list[dict[str, Any]]:
    if isinstance(data, dict) and "feedback" in data:
        items = data["feedback"]
        if not isinstance(items, list) or not items:
            raise InvalidFields(
                "feedback: must be a non-empty list of {prediction_id, label}", param="feedback"
            )
    else:
        items = [data]
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "prediction_id" not in item or "label" not in item:
            raise InvalidFields(
                f"feedback[{i}]: needs prediction_id and label",
                param=f"feedback[{i}]",
                code="invalid_feedback",
            )
    return cast(list[dict[str, Any]], items)


@router.get("/v1/ml", summary="Models this key may call")
async def list_models(request: Request) -> Response:
    gateway, ml = gateway_of(request), ml_of(request)
    principal = gateway.authenticate(call_for(request, "/v1/ml"), request.headers.get("authorization"))
    cards = [_card(ml, n) for n in ml.catalog.names("model") if principal.may_call("model", n)]
    return _json({"object": "list", "data": [c for c in cards if c is not None]})


@router.get("/v1/ml/{name}", summary="One model's card: version, schema, output")
async def get_model(request: Request, name: str) -> Response:
    gateway, ml = gateway_of(request), ml_of(request)
    call = call_for(request, "/v1/ml")
    gateway.authenticate(call, request.headers.get("authorization"))
    record = ml.resolve(call, name)
    spec: ModelSpec = ml.catalog.spec_for(record, ModelSpec)
    return _json(_card_for(ml, record.name, record.version, record.ref, spec))


def _card(ml: MLService, name: str) -> dict[str, Any] | None:
    try:
        record = ml.catalog.resolve("model", name)
    except NotFound:
        return None
    return _card_for(ml, name, record.version, record.ref, ml.catalog.spec_for(record, ModelSpec))


def _card_for(ml: MLService, name: str, version: int, ref: str, spec: ModelSpec) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "opsgate": {
            "kind": "model",
            "version": version,
            "ref": ref,
            "aliases": ml.catalog.aliases_of("model", name),
            "task": spec.task,
            "description": spec.description,
            "inputs": {k: v.model_dump(exclude_defaults=True) for k, v in spec.inputs.items()},
            "labels": spec.output.labels,
        },
    }


# -- admin: monitoring figures ------------------------------------------------------------------------


async def _admin_model(request: Request, name: str, version: str | None) -> Any:
    gateway, ml = gateway_of(request), ml_of(request)
    call = call_for(request, "/admin/ml")
    principal = gateway.authenticate(call, request.headers.get("authorization"))
    if not principal.has_role(*MONITOR_ROLES):
        raise PermissionDenied("monitoring figures need the role admin, approver or prompt-engineer")
    base, _, selector = name.partition("@")
    return await ml.served_for(base, version or selector or None)


@router.get("/admin/ml/{name}/monitor", summary="Drift, data quality, accuracy, fairness of a version")
async def monitor_figures(request: Request, name: str, version: str | None = None) -> Response:
    from gateway.ml.monitor import figures

    ml = ml_of(request)
    served = await _admin_model(request, name, version)
    await ml.writer.flush()
    return _json(await asyncio.to_thread(figures, ml.engine, served))


@router.post(
    "/admin/ml/{name}/monitor", summary="Judge a version now: store reports, alert, trigger retraining"
)
async def monitor_check(request: Request, name: str, version: str | None = None) -> Response:
    served = await _admin_model(request, name, version)
    return _json(await ml_of(request).check(served))


@router.get("/admin/ml/{name}/importance", summary="Global feature importance (mean |SHAP|) of a version")
async def importance(request: Request, name: str, version: str | None = None) -> Response:
    ml = ml_of(request)
    served = await _admin_model(request, name, version)
    found = await asyncio.to_thread(ml.explainer(served).global_importance)
    return _json({"ref": served.ref, **found})
