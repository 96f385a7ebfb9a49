"""/v1/ml: predict, the MLflow scoring protocol, data-quality 422s, auth, lineage, explanations,
against the real server (`opsgate serve`) over HTTP."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import GatewayFactory
from tests.fakes.gateway import GatewayProcess
from tests.ml.conftest import Data, records, start_ml_gateway

VERSIONS = re.compile(r"^model:cancer@1#[0-9a-f]{12}$")


@pytest.fixture(scope="module")
def gw(gateway_factory: GatewayFactory, ml_project: Path) -> Iterator[GatewayProcess]:
    with start_ml_gateway(gateway_factory, ml_project) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def http(gw: GatewayProcess) -> Iterator[httpx.Client]:
    with gw.http(headers=gw.auth()) as client:
        yield client


def cancer_rows(data: Data, n: int = 5) -> list[dict]:
    return records(data.cancer.drop(columns=["target"]).head(n))


def test_predict_matches_the_model_and_stamps_lineage(
    gw: GatewayProcess, http: httpx.Client, data: Data
) -> None:
    rows = cancer_rows(data)
    resp = http.post("/v1/ml/cancer/predict", json={"records": rows})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    frame = data.cancer.drop(columns=["target"]).head(5)
    expected = data.cancer_model.predict_proba(frame)
    assert body["model"] == "cancer" and body["version"] == 1
    assert VERSIONS.match(resp.headers["x-opsgate-versions"])
    request_id = resp.headers["x-opsgate-request-id"]
    for i, p in enumerate(body["predictions"]):
        assert p["id"] == f"{request_id}:{i}"
        assert p["label"] == int(expected[i].argmax())
        assert p["probabilities"]["1"] == pytest.approx(expected[i][1], abs=1e-12)
    row = gw.log_row(request_id)
    assert row["route"] == "/v1/ml/{name}/predict"
    assert row["status"] == 200
    assert VERSIONS.match(row["artifacts"][0])
    assert row["extra"]["ml"] == {"rows": 5, "flagged": 0}


def test_selectors_by_version_and_alias(http: httpx.Client, data: Data) -> None:
    rows = cancer_rows(data, 1)
    for name in ("cancer@1", "cancer@production", "cancer@latest", "model:cancer"):
        assert http.post(f"/v1/ml/{name}/predict", json={"records": rows}).status_code == 200, name
    missing = http.post("/v1/ml/nope/predict", json={"records": rows})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert http.post("/v1/ml/cancer@9/predict", json={"records": rows}).status_code == 404


@pytest.mark.parametrize(
    "shape",
    ["dataframe_split", "dataframe_records", "instances", "instances_lists", "inputs_columns", "csv"],
)
def test_mlflow_scoring_protocol(http: httpx.Client, data: Data, shape: str) -> None:
    frame = data.cancer.drop(columns=["target"]).iloc[10:16]
    rows = records(frame)
    cols = list(frame.columns)
    bodies = {
        "dataframe_split": {"dataframe_split": {"columns": cols, "data": frame.to_numpy().tolist()}},
        "dataframe_records": {"dataframe_records": rows},
        "instances": {"instances": rows},
        "instances_lists": {"instances": frame.to_numpy().tolist()},
        "inputs_columns": {"inputs": {c: frame[c].tolist() for c in cols}},
    }
    if shape == "csv":
        resp = http.post("/v1/ml/cancer/invocations", content=frame.to_csv(index=False),
                         headers={"content-type": "text/csv"})  # fmt: skip
    else:
        resp = http.post("/v1/ml/cancer/invocations", json=bodies[shape])
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"predictions": data.cancer_model.predict(frame).tolist()}


def test_mlflow_protocol_errors_name_the_problem(http: httpx.Client) -> None:
    resp = http.post("/v1/ml/cancer/invocations", json={"dataframe_records": [], "instances": []})
    assert resp.status_code == 422
    assert "exactly one of dataframe_split" in resp.json()["error"]["message"]
    resp = http.post("/v1/ml/cancer/invocations", json={"instances": [[1, 2, 3]]})
    assert resp.status_code == 422 and "need 8 in the order" in resp.json()["error"]["message"]


def test_regression_model(http: httpx.Client, data: Data) -> None:
    frame = data.diabetes[["age", "bmi", "bp", "s5"]].head(3)
    resp = http.post("/v1/ml/sugar/predict", json={"records": records(frame)})
    assert resp.status_code == 200, resp.text
    values = [p["value"] for p in resp.json()["predictions"]]
    assert values == pytest.approx(data.sugar_model.predict(frame.to_numpy()).tolist())


@pytest.mark.parametrize(
    ("change", "field", "rule"),
    [
        ({"mean_radius": "12.5"}, "mean_radius", "type"),
        ({"mean_radius": True}, "mean_radius", "type"),
        ({"mean_radius": None}, "mean_radius", "required"),
        ({"mean_radius": -3.0}, "mean_radius", "min"),
        ({"extra_column": 1}, "extra_column", "unknown_field"),
    ],
)
def test_bad_rows_are_422_naming_row_field_rule(
    gw: GatewayProcess, http: httpx.Client, data: Data, change: dict, field: str, rule: str
) -> None:
    rows = cancer_rows(data, 3)
    rows[2] = {**rows[2], **change}
    resp = http.post("/v1/ml/cancer/predict", json={"records": rows})
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["code"] == "data_quality"
    assert error["param"] == f"rows[2].{field}"
    assert error["violations"] == [
        {"row": 2, "field": field, "rule": rule, "message": error["violations"][0]["message"]}
    ]
    assert error["message"].startswith(f"row 2, field '{field}', rule {rule}:")
    assert "Traceback" not in resp.text
    row = gw.log_row(resp.headers["x-opsgate-request-id"])
    assert row["status"] == 422 and row["error_type"] == "data_quality"
    assert row["decisions"] == [{"check": "data_quality", "action": "reject", "violations": 1}]


def test_missing_column_and_non_finite_values(http: httpx.Client, data: Data) -> None:
    rows = cancer_rows(data, 2)
    del rows[0]["mean_area"]
    resp = http.post("/v1/ml/cancer/predict", json={"records": rows})
    assert resp.json()["error"]["violations"][0] == {
        "row": 0, "field": "mean_area", "rule": "required", "message": "is missing"
    }  # fmt: skip
    for literal in ("NaN", "Infinity", "-Infinity"):
        raw = '{"records": [{"mean_radius": ' + literal + "}]}"
        resp = http.post("/v1/ml/cancer/predict", content=raw, headers={"content-type": "application/json"})
        assert resp.status_code == 422, literal
        first = resp.json()["error"]["violations"][0]
        assert (first["row"], first["field"], first["rule"]) == (0, "mean_radius", "finite")


def test_flag_mode_scores_and_counts(http: httpx.Client) -> None:
    rows = [{"income": 80.0, "group": "a"}, {"income": 20.0, "group": "zz"}]
    resp = http.post("/v1/ml/loans/predict", json={"records": rows})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert [p["label"] for p in body["predictions"]] == [1, 0]
    assert body["violations"][0]["row"] == 1 and body["violations"][0]["rule"] == "categories"
    # hard violations still reject in flag mode: the model cannot score a string income
    resp = http.post("/v1/ml/loans/predict", json={"records": [{"income": "lots", "group": "a"}]})
    assert resp.status_code == 422


def test_auth_and_allow_lists(gw: GatewayProcess, data: Data) -> None:
    rows = {"records": cancer_rows(data, 1)}
    with gw.http() as raw:
        assert raw.post("/v1/ml/cancer/predict", json=rows).status_code == 401
        key = gw.cli(
            "keys",
            "create",
            "--name",
            "sugar-only",
            "--role",
            "app",
            "--allow",
            "model:sugar",
            key=gw.admin_key,
        ).stdout.strip()
        import time

        time.sleep(1.2)  # the gateway's key cache refreshes every 0.5 s
        resp = raw.post("/v1/ml/cancer/predict", json=rows, headers=gw.auth(key))
        assert resp.status_code == 403 and "model:cancer" in resp.json()["error"]["message"]


def test_explanations_are_additive_shap_values(http: httpx.Client, data: Data) -> None:
    rows = cancer_rows(data, 2)
    resp = http.post("/v1/ml/cancer/predict", json={"records": rows, "explain": True}, timeout=120)
    assert resp.status_code == 200, resp.text
    for p in resp.json()["predictions"]:
        e = p["explanation"]
        assert set(e["attributions"]) == set(rows[0])
        # SHAP's efficiency property: base value + attributions = the explained output
        total = e["base_value"] + math.fsum(e["attributions"].values())
        assert total == pytest.approx(p["probabilities"]["1"], abs=1e-6)
    imp = http.get("/admin/ml/cancer/importance", timeout=300).json()
    assert set(imp["importance"]) == set(rows[0]) and imp["rows"] == 100
    assert list(imp["importance"].values()) == sorted(imp["importance"].values(), reverse=True)


def test_model_cards(http: httpx.Client) -> None:
    listed = http.get("/v1/ml").json()["data"]
    assert {m["id"] for m in listed} >= {"cancer", "sugar", "loans"}
    card = http.get("/v1/ml/loans").json()["opsgate"]
    assert card["inputs"]["group"] == {"type": "string", "categories": ["a", "b"], "feature": False}
    assert card["aliases"]["production"] == 1


def test_metrics_share_the_per_version_labels(gw: GatewayProcess) -> None:
    text = gw.metrics()
    assert (
        'opsgate_requests_total{artifact="model:cancer@1",route="/v1/ml/{name}/predict",status="200"}' in text
    )
    assert re.search(r'opsgate_ml_rows_total\{artifact="model:cancer@1"\} \d+', text)
    assert 'opsgate_ml_violations_total{artifact="model:cancer@1",field="mean_radius",rule="min"}' in text


def test_ready_only_once_aliased_models_are_loaded(gateway_factory: GatewayFactory, ml_project: Path) -> None:
    """A replica reports ready (and so gets traffic) only when the versions its aliases point at are in
    memory: the first request must not wait for a model file to be verified and loaded."""
    # start_ml_gateway returns at the first 200 from /readyz
    with start_ml_gateway(gateway_factory, ml_project) as fresh, fresh.http(headers=fresh.auth()) as client:
        ready = client.get("/readyz")
        models = client.get("/v1/ml").json()["data"]
    assert ready.status_code == 200
    assert len(models) >= 2
    assert ready.json()["checks"]["models"] == {
        "loaded": len(models),
        "loading": 0,
        "failed": 0,
        "explanations_warm": True,  # SHAP compiled before ready, not in the first `explain: true` request
    }
