"""Feedback, accuracy, drift, fairness, alerts and the retraining trigger, on SQLite and PostgreSQL,
against the real server; alerts reach a real local webhook receiver that checks their HMAC."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import GatewayFactory
from tests.fakes.gateway import GatewayProcess
from tests.ml.conftest import Data, Receiver, records, start_ml_gateway


@pytest.fixture(scope="module")
def gw(gateway_factory: GatewayFactory, ml_project: Path, db_url: str) -> Iterator[GatewayProcess]:
    with start_ml_gateway(gateway_factory, ml_project, db_url) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def http(gw: GatewayProcess) -> Iterator[httpx.Client]:
    with gw.http(headers=gw.auth(), timeout=120) as client:
        yield client


def predict(http: httpx.Client, name: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    resp = http.post(f"/v1/ml/{name}/predict", json={"records": rows})
    assert resp.status_code == 200, resp.text
    return list(resp.json()["predictions"])


def wait_for(
    receiver: Receiver, kind: str, model: str, count: int, timeout: float = 10
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while len(receiver.of(kind, model)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return receiver.of(kind, model)


def wait_run(http: httpx.Client, model: str, run_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        run = http.get(f"/admin/ml/{model}/retrain/{run_id}").json()
        if run["status"] != "running" or time.monotonic() > deadline:
            return dict(run)
        time.sleep(0.1)


def test_feedback_gives_accuracy_f1_auc(http: httpx.Client, data: Data) -> None:
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    sample = data.cancer.sample(n=100, random_state=3)
    preds = predict(http, "cancer", records(sample.drop(columns=["target"])))
    truth = sample["target"].tolist()
    feedback = [{"prediction_id": p["id"], "label": t} for p, t in zip(preds, truth, strict=True)]
    resp = http.post("/v1/ml/cancer/feedback", json={"feedback": feedback})
    assert resp.json() == {"accepted": 100}
    unknown = http.post("/v1/ml/cancer/feedback", json={"prediction_id": "req_nope:0", "label": 1})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "prediction_not_found"
    bad = http.post("/v1/ml/cancer/feedback", json={"prediction_id": preds[0]["id"], "label": 7})
    assert bad.status_code == 422 and "not one of the model's classes" in bad.json()["error"]["message"]

    found = http.get("/admin/ml/cancer/monitor").json()
    window = found["accuracy"]["windows"]["last_500"]
    labels = [p["label"] for p in preds]
    assert window["n"] == 100
    assert window["accuracy"] == pytest.approx(accuracy_score(truth, labels))
    assert window["f1"] == pytest.approx(f1_score(truth, labels))
    assert window["auc"] == pytest.approx(roc_auc_score(truth, [p["probabilities"]["1"] for p in preds]))
    assert found["accuracy"]["breached"] is False
    assert found["drift"]["dataset_drift"] is False  # a random sample of the reference itself
    assert found["drift"]["columns_detail"]["mean_radius"]["test"] == "ks"  # 569 reference rows <= 1,000


def test_shifted_inputs_drift_alert_and_retrain(
    gw: GatewayProcess, http: httpx.Client, data: Data, receiver: Receiver, ml_project: Path
) -> None:
    drift_before = len(receiver.of("drift", "cancer"))
    retrain_before = len(receiver.of("retrain", "cancer"))
    calls = ml_project / "retrain-calls.jsonl"
    calls_before = len(calls.read_text().splitlines()) if calls.exists() else 0
    shifted = data.cancer.nlargest(300, "mean_area")  # the largest tumours: a shifted subset
    predict(http, "cancer", records(shifted.drop(columns=["target"])))
    found = http.post("/admin/ml/cancer/monitor").json()
    drift = found["drift"]
    assert drift["dataset_drift"] is True
    assert {"mean_radius", "mean_area", "mean_perimeter"} <= set(drift["drifted_columns"])
    assert drift["prediction_drift"]["drifted"] is True  # far more malignant predictions
    assert found["alerts"] == ["drift"]
    events = wait_for(receiver, "drift", "cancer", drift_before + 1)
    event = events[-1]
    assert event["verified"] is True
    assert event["body"]["ref"].startswith("model:cancer@1#")
    assert event["body"]["evidence"]["dataset_drift"] is True
    retrain = wait_for(receiver, "retrain", "cancer", retrain_before + 1)[-1]
    assert retrain["verified"] and retrain["body"]["reasons"] == ["drift"]
    # the operator's command runs in the background: the answer has its run id and status, no output
    command = found["retrain"]["command"]
    assert command["name"] == "cancer_retrain" and command["status"] == "running"
    assert set(command) == {"name", "run_id", "status"}
    run = wait_run(http, "cancer", command["run_id"])
    assert run["status"] == "succeeded" and run["exit_code"] == 0 and "output" not in run
    lines = calls.read_text().splitlines()
    assert len(lines) == calls_before + 1
    assert json.loads(lines[-1])["ref"] == event["body"]["ref"]
    # still breached on the next check: no second alert (alerts fire on the transition)
    again = http.post("/admin/ml/cancer/monitor").json()
    assert again["alerts"] == []
    assert 'opsgate_ml_dataset_drift{artifact="model:cancer@1"} 1.0' in gw.metrics()


def test_fairness_breach_with_controlled_bias(http: httpx.Client, receiver: Receiver) -> None:
    before = len(receiver.of("fairness", "loans"))
    group_a = [{"income": 60.0 + i * 0.5, "group": "a"} for i in range(50)]  # all approved
    group_b = [{"income": 70.0, "group": "b"}] * 10 + [
        {"income": 15.0 + i * 0.5, "group": "b"} for i in range(40)
    ]
    preds = predict(http, "loans", group_a + group_b)
    assert sum(p["label"] for p in preds[:50]) == 50 and sum(p["label"] for p in preds[50:]) == 10
    # ground truth: every a is creditworthy; in b, the 10 approved and 10 of the refused are
    truth = [1] * 50 + [1] * 20 + [0] * 30
    http.post("/v1/ml/loans/feedback", json={"feedback": [
        {"prediction_id": p["id"], "label": t} for p, t in zip(preds, truth, strict=True)
    ]})  # fmt: skip
    found = http.post("/admin/ml/loans/monitor").json()
    group = found["fairness"]["attributes"]["group"]
    assert group["groups"]["a"]["selection_rate"] == 1.0
    assert group["groups"]["b"]["selection_rate"] == pytest.approx(0.2)
    assert group["disparate_impact"] == pytest.approx(0.2)  # far under the four-fifths rule
    assert group["demographic_parity_difference"] == pytest.approx(0.8)
    assert group["equal_opportunity_difference"] == pytest.approx(0.5)  # TPR 1.0 vs 10/20
    assert set(group["breaches"]) == {
        "disparate_impact", "demographic_parity_difference", "equal_opportunity_difference"
    }  # fmt: skip
    assert "fairness" in found["alerts"]
    event = wait_for(receiver, "fairness", "loans", before + 1)[-1]
    assert event["verified"] and "disparate_impact" in event["body"]["summary"]


def test_cli_monitor_prints_the_same_figures(gw: GatewayProcess, http: httpx.Client) -> None:
    api = http.get("/admin/ml/cancer/monitor").json()
    out = gw.cli("ml", "monitor", "cancer@production", "--json").stdout
    cli = json.loads(out.splitlines()[0])
    assert cli["aliases"] == ["latest", "production"]
    assert cli["predictions"] == api["predictions"] == 400
    assert cli["drift"]["drifted_columns"] == api["drift"]["drifted_columns"]
    assert cli["accuracy"]["windows"]["last_500"] == api["accuracy"]["windows"]["last_500"]
    assert cli["data_quality"]["rejected_requests"] == api["data_quality"]["rejected_requests"]
    text = gw.cli("ml", "monitor", "loans").stdout
    assert "fairness      group: DI 0.20 DPD 0.80 EOD 0.50  [BREACH" in text
