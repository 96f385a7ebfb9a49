"""Explanations of models with string inputs (issue 13), on a real loan table, against the real server.

Data: the German credit dataset (tests/ml/data/README.md): 1,000 applicants, four string columns
(housing, savings, checking account, purpose), four numbers, the protected attribute `sex` (checked and
logged, not fed to the model). Models: one-hot encoding + logistic regression (`credit`), the same
encoding + gradient boosting (`credit_gb`, whose skops file holds a type the operator trusts in
`ml.trusted_types`), and `credit_broken`, whose encoder refuses categories it never saw while its
reference data holds one: it scores requests, but explaining them (which mixes reference rows in) fails.

Checked: the start-up warm-up runs on such a model and /readyz says so; `explain: true` returns exactly
the interventional Shapley values of the model over the input columns (recomputed here by brute force
over all 2^8 coalitions with the same background); global importance answers; and a request that fails
while explaining is answered with one clear error and logs no prediction (its ids never reached anyone).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gateway.ml.tables import MLPrediction, MLQualityEvent
from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import GatewayProcess, commit_project
from tests.ml.conftest import records

DATA = Path(__file__).parent / "data" / "german_credit.csv"
STRINGS = ["housing", "saving_accounts", "checking_account", "purpose"]
NUMBERS = ["job", "credit_amount", "duration", "age"]
FEATURES = NUMBERS[:1] + STRINGS[:3] + NUMBERS[1:3] + STRINGS[3:] + NUMBERS[3:]  # the file's order
UNSEEN = "business"  # credit_broken's encoder never saw it; its reference data has it
BACKGROUND_ROWS = 50  # the spec's explain.background_rows (default)
GATEWAY_YAML = (
    "request_log:\n  flush_interval_s: 0.02\n"
    "ml:\n  monitor_interval_s: 0\n  flush_interval_s: 0.05\n"
    "  trusted_types: [sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor]\n"
)


def credit_data() -> pd.DataFrame:
    return pd.read_csv(DATA)


def schema(frame: pd.DataFrame) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {
        c: {"type": "string", "categories": sorted(frame[c].unique())} for c in STRINGS
    }
    out.update({c: {"type": "integer", "min": 0} for c in NUMBERS})
    out["age"]["max"] = 120
    out["sex"] = {"type": "string", "categories": ["female", "male"], "feature": False}
    return out


def pipeline(estimator: Any, unknown: str = "ignore") -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    encode = ColumnTransformer(
        [("strings", OneHotEncoder(handle_unknown=unknown), STRINGS), ("numbers", StandardScaler(), NUMBERS)]
    )
    return make_pipeline(encode, estimator)


@pytest.fixture(scope="module")
def models() -> dict[str, Any]:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    frame = credit_data()
    train = frame.iloc[:700]
    seen = train[train["purpose"] != UNSEEN]
    return {
        "credit": pipeline(LogisticRegression(max_iter=5000)).fit(train[FEATURES], train["risk"]),
        "credit_gb": pipeline(HistGradientBoostingClassifier(max_iter=50, random_state=0)).fit(
            train[FEATURES], train["risk"]
        ),
        "credit_broken": pipeline(LogisticRegression(max_iter=5000), unknown="error").fit(
            seen[FEATURES], seen["risk"]
        ),
    }


@pytest.fixture(scope="module")
def gw(
    project_factory: ProjectFactory, gateway_factory: GatewayFactory, models: dict[str, Any]
) -> Iterator[GatewayProcess]:
    from gateway.ml import register

    frame = credit_data()
    reference = frame.iloc[:700][[*FEATURES, "sex", "risk"]]
    project = project_factory(files={"config/gateway.yaml": GATEWAY_YAML})
    for name, model in models.items():
        register(
            model,
            name,
            schema(frame),
            reference,
            project_dir=project,
            target="risk",
            fairness={"protected": ["sex"], "favourable": 1},
            output={"labels": [0, 1], "positive": 1},
            data_quality={"on_violation": "flag" if name == "credit_broken" else "reject"},
        )
    commit_project(project, "credit models")
    with gateway_factory(project) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def http(gw: GatewayProcess) -> Iterator[httpx.Client]:
    with gw.http(headers=gw.auth(), timeout=300) as client:
        yield client


def applicants(n: int = 3) -> list[dict[str, Any]]:
    rows = credit_data().iloc[800 : 800 + n][[*FEATURES, "sex"]]
    return records(rows)


def brute_force_shapley(model: Any, row: dict[str, Any]) -> tuple[float, dict[str, float]]:
    """Interventional Shapley values of P(risk = 1) over the input columns, with the gateway's background
    (50 reference rows sampled with seed 0): v(S) = mean over background rows b of f(x_S, b_rest)."""
    reference = credit_data().iloc[:700][[*FEATURES, "sex", "risk"]]
    background = reference.sample(n=BACKGROUND_ROWS, random_state=0)[FEATURES].reset_index(drop=True)
    n = len(FEATURES)
    frames = []
    subsets = list(itertools.product([False, True], repeat=n))
    for subset in subsets:
        masked = background.copy()
        for column, present in zip(FEATURES, subset, strict=True):
            if present:
                masked[column] = row[column]
        frames.append(masked)
    scores = model.predict_proba(pd.concat(frames, ignore_index=True))[:, 1]
    value = dict(zip(subsets, scores.reshape(len(subsets), -1).mean(axis=1), strict=True))
    phi = {}
    for i, column in enumerate(FEATURES):
        total = 0.0
        for subset in subsets:
            if subset[i]:
                continue
            size = sum(subset)
            weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            with_i = tuple(True if j == i else s for j, s in enumerate(subset))
            total += weight * (value[with_i] - value[subset])
        phi[column] = total
    return float(value[(False,) * n]), phi


def test_readiness_waits_for_the_warm_up_on_a_model_with_string_inputs(http: httpx.Client) -> None:
    models = http.get("/readyz").json()["checks"]["models"]
    assert models == {"loaded": 3, "loading": 0, "failed": 0, "explanations_warm": True}


@pytest.mark.parametrize("name", ["credit", "credit_gb"])
def test_explanations_are_the_exact_shapley_values_of_the_model(
    http: httpx.Client, models: dict[str, Any], name: str
) -> None:
    rows = applicants()
    resp = http.post(f"/v1/ml/{name}/predict", json={"records": rows, "explain": True})
    assert resp.status_code == 200, resp.text
    for row, prediction in zip(rows, resp.json()["predictions"], strict=True):
        e = prediction["explanation"]
        assert e["output"] == "probability of class 1"
        assert list(e["attributions"]) == FEATURES  # every input column, by name; `sex` is not a feature
        # additivity: base value + attributions = the model's output for the row
        total = e["base_value"] + math.fsum(e["attributions"].values())
        assert total == pytest.approx(prediction["probabilities"]["1"], abs=1e-9)
        base, phi = brute_force_shapley(models[name], row)
        assert e["base_value"] == pytest.approx(base, abs=1e-9)
        assert e["attributions"] == pytest.approx(phi, abs=1e-9)
    assert any(abs(v) > 1e-3 for c, v in e["attributions"].items() if c in STRINGS)  # strings matter


def test_global_importance_of_a_model_with_string_inputs(http: httpx.Client) -> None:
    resp = http.get("/admin/ml/credit/importance")
    assert resp.status_code == 200, resp.text
    found = resp.json()
    assert set(found["importance"]) == set(FEATURES) and found["rows"] == 100
    values = list(found["importance"].values())
    assert values == sorted(values, reverse=True) and values[0] > 0


def _logged(gw: GatewayProcess, request_id: str) -> tuple[int, int]:
    with Session(gw._db()) as session:
        predictions = session.scalar(select(func.count()).where(MLPrediction.request_id == request_id))
        events = session.scalar(select(func.count()).where(MLQualityEvent.request_id == request_id))
    return int(predictions or 0), int(events or 0)


def test_a_request_that_fails_while_explaining_logs_no_prediction(
    gw: GatewayProcess, http: httpx.Client
) -> None:
    rows = applicants(4)
    rows[1] = {**rows[1], "age": 200}  # flagged (over max) and scored: its event belongs to an answer
    failed = http.post("/v1/ml/credit_broken/predict", json={"records": rows, "explain": True})
    assert failed.status_code == 503, failed.text
    error = failed.json()["error"]
    assert error["code"] == "explanation_failed" and "nothing was recorded" in error["message"]
    failed_id = failed.headers["x-opsgate-request-id"]
    assert gw.log_row(failed_id)["status"] == 503 and gw.count_rows(failed_id) == 1
    before = http.get("/admin/ml/credit_broken/monitor").json()["predictions"]  # flushes the writer
    assert _logged(gw, failed_id) == (0, 0)

    answered = http.post("/v1/ml/credit_broken/predict", json={"records": rows})
    assert answered.status_code == 200, answered.text
    assert http.get("/admin/ml/credit_broken/monitor").json()["predictions"] == before + len(rows)
    assert _logged(gw, answered.headers["x-opsgate-request-id"]) == (len(rows), 1)
    ids = [p["id"] for p in answered.json()["predictions"]]
    unknown = http.post("/v1/ml/credit_broken/feedback", json={"prediction_id": f"{failed_id}:0", "label": 1})
    assert unknown.status_code == 404  # the failed request's ids were never predictions
    known = http.post("/v1/ml/credit_broken/feedback", json={"prediction_id": ids[0], "label": 1})
    assert known.json() == {"accepted": 1}


def test_explain_is_refused_up_front_when_it_cannot_be_served(http: httpx.Client) -> None:
    too_many = [applicants(1)[0]] * 101
    resp = http.post("/v1/ml/credit/predict", json={"records": too_many, "explain": True})
    assert resp.status_code == 422 and resp.json()["error"]["param"] == "explain"
