"""A canary rollout of a classic model on /v1/ml/...: sticky arms per caller (key principal and the body's
`user`), the log row says which arm served, and a candidate that predicts worse is rolled back on
accuracy from feedback, with prediction drift and the p95 latency in the evidence."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import GatewayProcess
from tests.ml.conftest import CANCER_FEATURES, Data, col, git_commit, records, start_ml_gateway
from tests.rollouts.test_server import _new_key, _status, _wait
from tests.rollouts.test_shadow import _shadow_rows

USERS = [f"patient-{i}" for i in range(60)]
ROWS_PER_REQUEST = 5


def _register_cancer(root: Path, model: Any, d: Data, description: str) -> None:
    from gateway.ml import register

    schema = {col(c): {"type": "number", "min": 0} for c in CANCER_FEATURES}
    register(model, "cancer", schema, d.cancer, project_dir=root, target="target", description=description)


@pytest.fixture(scope="module")
def gw(
    project_factory: ProjectFactory, gateway_factory: GatewayFactory, data: Data
) -> Iterator[tuple[GatewayProcess, dict[str, str]]]:
    """`cancer` version 1 (logistic regression) in production; version 2 trained on shuffled labels."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    root = project_factory()
    (root / "config" / "gateway.yaml").write_text(
        "ml:\n  monitor_interval_s: 0\n  flush_interval_s: 0.05\nrequest_log:\n  flush_interval_s: 0.02\n"
        "cache:\n  refresh_interval_s: 0.2\nrollouts:\n  check_interval_s: 3600\n",
        encoding="utf-8",
    )
    _register_cancer(root, data.cancer_model, data, "v1")
    git_commit(root)
    gw = start_ml_gateway(gateway_factory, root)
    x = data.cancer.drop(columns="target")
    shuffled = np.random.default_rng(3).permutation(data.cancer["target"].to_numpy())
    bad = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x, shuffled)
    _register_cancer(root, bad, data, "v2: trained on shuffled labels")
    git_commit(root, "cancer v2")
    assert "model:cancer@2" in gw.cli("sync", key=gw.admin_key).stdout
    keys = {
        "engineer": _new_key(gw, "engineer", "engineer@example.com", ["prompt-engineer"]),
        "approver": _new_key(gw, "approver", "approver@example.com", ["approver"]),
    }
    with gw:
        yield gw, keys


def _predict_all(gw: GatewayProcess, data: Data) -> dict[str, tuple[str, list[str]]]:
    """One request of 5 rows per user: the version that served it and its prediction ids."""
    rows = records(data.cancer.drop(columns="target"))
    out: dict[str, tuple[str, list[str]]] = {}
    with gw.http() as http:
        for i, user in enumerate(USERS):
            batch = rows[i * ROWS_PER_REQUEST : (i + 1) * ROWS_PER_REQUEST]
            r = http.post("/v1/ml/cancer/predict", json={"records": batch, "user": user}, headers=gw.auth())
            assert r.status_code == 200, r.text
            out[user] = (
                r.headers["x-opsgate-versions"].split("#")[0],
                [p["id"] for p in r.json()["predictions"]],
            )
    return out


def test_a_worse_model_is_rolled_back_on_feedback_accuracy(
    gw: tuple[GatewayProcess, dict[str, str]], data: Data
) -> None:
    gateway, keys = gw
    body = {
        "kind": "model",
        "name": "cancer",
        "candidate": 2,
        "share": 0.5,
        "min_sample": 30,
        "interval_s": 3600,
        "metrics": [{"metric": "accuracy"}, {"metric": "prediction_drift"}, {"metric": "latency_p95"}],
    }
    with gateway.http() as http:
        r = http.post("/admin/rollouts", json=body, headers=gateway.auth(keys["engineer"]))
        assert r.status_code == 201, r.text
        started = r.json()
        ok = http.post(
            f"/admin/promotions/{started['promotion_id']}/approve",
            json={},
            headers=gateway.auth(keys["approver"]),
        )
        assert ok.status_code == 200, ok.text
        # the evaluator wakes hourly here: a check now activates the approved rollout
        assert http.post(f"/admin/rollouts/{started['id']}/check", headers=gateway.auth()).status_code == 200
    _wait(gateway, started["id"], {"active"}, timeout=2)
    time.sleep(0.6)  # the catalog sees the activation within its refresh interval
    first, second = _predict_all(gateway, data), _predict_all(gateway, data)
    assert {u: v for u, (v, _) in first.items()} == {u: v for u, (v, _) in second.items()}  # sticky
    served = [v for v, _ in first.values()]
    assert set(served) == {"model:cancer@1", "model:cancer@2"}
    assert 15 <= served.count("model:cancer@2") <= 45
    # the log rows say which arm served, and the version that did
    request_ids = {ids[0].rsplit(":", 1)[0]: version for version, ids in first.values()}
    rows = gateway.log_rows(request_ids)
    for rid, version in request_ids.items():
        arm = rows[rid]["extra"]["rollout"]
        assert arm["id"] == started["id"] and arm["target"] == "model:cancer"
        assert arm["arm"] == ("candidate" if version.endswith("@2") else "control")
    # ground truth for every prediction of the first round
    truth = data.cancer["target"].tolist()
    feedback = [
        {"prediction_id": pid, "label": int(truth[i * ROWS_PER_REQUEST + j])}
        for i, user in enumerate(USERS)
        for j, pid in enumerate(first[user][1])
    ]
    with gateway.http() as http:
        r = http.post("/v1/ml/cancer/feedback", json={"feedback": feedback}, headers=gateway.auth())
        assert r.status_code in (200, 202), r.text
        time.sleep(0.5)  # the ML writer flushes every 0.05 s
        checked = http.post(f"/admin/rollouts/{started['id']}/check", headers=gateway.auth())
    assert checked.status_code == 200, checked.text
    result = checked.json()
    tests = {t["metric"]: t for t in result["tests"]}
    assert result["state"] == "rolled_back", result
    accuracy = tests["accuracy"]
    assert accuracy["verdict"] == "worse" and accuracy["test"] == "msprt_rates"
    assert accuracy["mean_control"] > 0.85 > accuracy["mean_candidate"]
    assert accuracy["n_control"] + accuracy["n_candidate"] == len(feedback)
    assert tests["prediction_drift"]["n_control"] + tests["prediction_drift"]["n_candidate"] == 2 * len(
        feedback
    )
    p95 = tests["latency_p95"]
    assert p95["percentile"] == 0.95 and p95["value_control"] > 0 and p95["value_candidate"] > 0
    assert p95["n_control"] + p95["n_candidate"] == 2 * len(USERS)
    # everyone is served version 1 again once the catalog refreshes
    time.sleep(0.6)
    assert {v for v, _ in _predict_all(gateway, data).values()} == {"model:cancer@1"}


def test_a_shadow_model_scores_live_rows_off_the_path_and_is_judged_on_their_feedback(
    gw: tuple[GatewayProcess, dict[str, str]], data: Data
) -> None:
    gateway, keys = gw
    body = {
        "kind": "model",
        "name": "cancer",
        "candidate": 2,
        "mode": "shadow",
        "share": 1.0,
        "min_sample": 30,
        "interval_s": 3600,
        "metrics": [{"metric": "accuracy"}, {"metric": "prediction_drift"}],
    }
    with gateway.http() as http:
        r = http.post("/admin/rollouts", json=body, headers=gateway.auth(keys["engineer"]))
        assert r.status_code == 201, r.text
        started = r.json()
        ok = http.post(
            f"/admin/promotions/{started['promotion_id']}/approve",
            json={},
            headers=gateway.auth(keys["approver"]),
        )
        assert ok.status_code == 200, ok.text
        assert http.post(f"/admin/rollouts/{started['id']}/check", headers=gateway.auth()).status_code == 200
    _wait(gateway, started["id"], {"active"}, timeout=2)
    time.sleep(0.6)
    answered = _predict_all(gateway, data)
    assert {v for v, _ in answered.values()} == {"model:cancer@1"}  # every live answer is the control's
    stats = _status(gateway, started["id"])["shadow"]
    assert stats["sampled"] == len(USERS) and stats["started"] >= 10 and stats["failed"] == 0, stats
    rows = _shadow_rows(gateway, started["id"], stats["started"])
    assert len(rows) == stats["started"]
    live_ids = {ids[0].rsplit(":", 1)[0] for _, ids in answered.values()}
    for row in rows:
        assert [a.split("#")[0] for a in row["artifacts"]] == ["model:cancer@2"]
        assert row["status"] == 200 and row["extra"]["shadow_of"] in live_ids
        assert row["extra"]["ml"]["rows"] == ROWS_PER_REQUEST
    truth = data.cancer["target"].tolist()
    feedback = [
        {"prediction_id": pid, "label": int(truth[i * ROWS_PER_REQUEST + j])}
        for i, user in enumerate(USERS)
        for j, pid in enumerate(answered[user][1])
    ]
    with gateway.http() as http:
        r = http.post("/v1/ml/cancer/feedback", json={"feedback": feedback}, headers=gateway.auth())
        assert r.status_code in (200, 202), r.text
        time.sleep(0.5)
        checked = http.post(f"/admin/rollouts/{started['id']}/check", headers=gateway.auth()).json()
    tests = {t["metric"]: t for t in checked["tests"]}
    assert checked["state"] == "rolled_back", checked
    accuracy = tests["accuracy"]
    # the candidate's shadow predictions are judged by the feedback given to the live ones they copied
    assert accuracy["verdict"] == "worse" and accuracy["n_control"] == len(feedback)
    assert accuracy["n_candidate"] == stats["started"] * ROWS_PER_REQUEST
    assert accuracy["mean_control"] > 0.85 > accuracy["mean_candidate"]
