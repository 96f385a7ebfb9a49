"""Issue 11, finding 3: a model file that runs code when loaded, vouched for by its own spec.

Attack: a prompt engineer commits a spec with `trusted: true` (and `trusted_types`) beside a pickle, a
joblib and a skops file whose loading writes a canary file, and runs `opsgate sync`. Before the fix the
gateway loaded `latest` at once (the preload) and at every start: the canary appeared within a second.

Secure outcome: the canary never appears on sync, at start, on a predict by version number or `latest`
(through /predict, /invocations, the admin monitor or the CLI). A file that runs code loads only when
the operator lists the model in config/gateway.yaml (`ml.trusted_models`, by name or sha256) AND a
protected alias points at the version after an approval by someone else; the spec's own flags count for
nothing, even once approved.
"""

from __future__ import annotations

import hashlib
import pickle
import time
from pathlib import Path
from typing import Any

import httpx
import joblib
import skops.io as sio

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import FAST_GATEWAY_YAML, GatewayProcess, commit_project
from tests.security._ml import PickleCanary, make_key, rows, small_model, spec, wait_until
from tests.security._ml_payloads import SkopsCanary

CANARY_TYPE = "tests.security._ml_payloads.SkopsCanary"
VARIANTS: dict[str, tuple[str, str, dict[str, Any]]] = {  # name -> file, format, what the spec claims
    "evil_pickle": ("evil_pickle.pkl", "pickle", {"trusted": True}),
    "evil_joblib": ("evil_joblib.joblib", "joblib", {"trusted": True}),
    "evil_skops": ("evil_skops.skops", "skops", {"trusted": True, "trusted_types": [CANARY_TYPE]}),
}


def write_evil_models(root: Path, canaries: Path, model: Any) -> None:
    folder = root / "config" / "models"
    folder.mkdir(parents=True, exist_ok=True)
    for name, (file, fmt, claims) in VARIANTS.items():
        canary = canaries / f"{name}.canary"
        if fmt == "pickle":
            (folder / file).write_bytes(pickle.dumps(PickleCanary(canary, model)))
        elif fmt == "joblib":
            joblib.dump(PickleCanary(canary, model), folder / file)
        else:
            sio.dump(SkopsCanary(str(canary)), folder / file)
        (folder / f"{name}.yaml").write_text(spec(name, file, fmt, **claims), encoding="utf-8")


def fired(canaries: Path) -> list[str]:
    return sorted(p.stem for p in canaries.glob("*.canary"))


def stays_quiet(canaries: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert fired(canaries) == []
        time.sleep(0.1)


def refused_everywhere(gw: GatewayProcess, key: str, body: dict[str, Any], status: int, code: str) -> None:
    """Every way of reaching an unapproved version by number or `latest` is refused, with one log row."""
    with gw.http(headers=gw.auth(key)) as http:
        for name in VARIANTS:
            for target in (f"{name}@1", f"{name}@latest"):
                for route, payload in (
                    ("predict", body),
                    ("invocations", {"dataframe_records": body["records"]}),
                ):
                    r = http.post(f"/v1/ml/{target}/{route}", json=payload)
                    assert (r.status_code, r.json()["error"]["code"]) == (status, code), (target, r.text)
                    assert gw.log_row(r.headers["x-opsgate-request-id"])["status"] == status
            r = http.get(f"/admin/ml/{name}/monitor", params={"version": 1})
            assert r.json()["error"]["code"] == code, r.text


def test_model_files_run_no_code_until_trusted_by_the_operator_and_approved(
    make_project: ProjectFactory, start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    model, x = small_model()
    body = {"records": rows(x)}
    canaries = tmp_path / "canaries"
    canaries.mkdir()
    project = make_project(files={"config/gateway.yaml": FAST_GATEWAY_YAML})
    commit_project(project, "a project with no model yet")
    gw = start_gateway(project)
    engineer = make_key(gw, "engineer", "prompt-engineer")
    approver = make_key(gw, "approver", "approver")

    # 1. the prompt engineer's commit and sync: registered, nothing loaded
    write_evil_models(project, canaries, model)
    commit_project(project, "models that trust themselves")
    synced = gw.cli("sync", key=engineer).stdout
    assert all(f"registered model:{name}@1" in synced for name in VARIANTS), synced
    with gw.http(headers=gw.auth(engineer)) as http:
        wait_until(lambda: _status(http, "evil_pickle@latest", body) != 404)
    stays_quiet(canaries, 5)  # a preload of `latest`, if there were one, would run now

    # 2. by number or latest, by any key, through every route: refused; the message says what to configure
    refused_everywhere(gw, engineer, body, 503, "model_untrusted")
    refused_everywhere(gw, gw.admin_key, body, 503, "model_untrusted")
    with gw.http(headers=gw.auth(engineer)) as http:
        message = http.post("/v1/ml/evil_pickle@1/predict", json=body).json()["error"]["message"]
    assert "ml: {trusted_models: [evil_pickle]}" in message and "counts for nothing" in message
    cli = gw.cli("ml", "monitor", "evil_pickle", key=gw.admin_key).stdout
    assert "cannot be loaded" in cli
    assert fired(canaries) == []

    # 3. at start, with the operator trusting two of them (by name, by sha256): still nothing loads
    gw.stop()
    joblib_sha = hashlib.sha256((project / "config/models/evil_joblib.joblib").read_bytes()).hexdigest()
    (project / "config" / "gateway.yaml").write_text(
        FAST_GATEWAY_YAML + f"ml:\n  trusted_models: [evil_pickle, 'sha256:{joblib_sha}']\n", encoding="utf-8"
    )
    gw = start_gateway(project, database_url=gw.db_url())
    stays_quiet(canaries, 3)
    refused = {"evil_pickle": "model_not_approved", "evil_joblib": "model_not_approved"}
    with gw.http(headers=gw.auth(engineer)) as http:
        for name in VARIANTS:
            for target in (f"{name}@1", f"{name}@latest"):
                r = http.post(f"/v1/ml/{target}/predict", json=body)
                assert r.json()["error"]["code"] == refused.get(name, "model_untrusted"), r.text
    assert fired(canaries) == []

    # 4. approved to a protected alias: the operator-trusted files load (the payload runs: the test can
    # see a load), the self-trusted skops file still does not
    for name in VARIANTS:
        promotion = gw.cli("promote", f"model:{name}@1", "--to", "staging", key=engineer).stdout.strip()
        gw.cli("approve", promotion, key=approver)
    with gw.http(headers=gw.auth(engineer)) as http:
        wait_until(lambda: _status(http, "evil_pickle@staging", body) == 200, timeout=30)
        wait_until(lambda: _status(http, "evil_joblib@staging", body) == 200, timeout=30)
        labels = [
            p["label"]
            for p in http.post("/v1/ml/evil_pickle@staging/predict", json=body).json()["predictions"]
        ]
        assert labels == model.predict(x[:3]).tolist()
        r = http.post("/v1/ml/evil_skops@staging/predict", json=body)
        assert r.json()["error"]["code"] == "model_untrusted", r.text
    assert fired(canaries) == ["evil_joblib", "evil_pickle"]


def _status(http: httpx.Client, target: str, body: dict[str, Any]) -> int:
    return http.post(f"/v1/ml/{target}/predict", json=body).status_code
