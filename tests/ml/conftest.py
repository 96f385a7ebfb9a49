"""Fixtures for classic ML: tiny models trained once per session on real data, a real gateway, a real
webhook receiver.

Data:
- breast cancer (scikit-learn's bundled copy): binary classifier `cancer` on 8 features. Drift is made
  by shifted subsets (the rows with the largest tumours), no drift by a random half.
- diabetes (bundled): regressor `sugar`.
- `loans`: a synthetic dataset whose bias we control. The model approves by income alone; the
  protected attribute `group` is logged, not fed to the model (feature: false). Sending group A rows
  with high incomes and group B rows with low incomes fixes each group's selection rate exactly, so the
  fairness figures are known in advance.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from gateway.monitoring.alerts import verify
from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import LOOPBACK_EGRESS_YAML, GatewayProcess

SECRET = "whsec-test-ml-0123456789"
CANCER_FEATURES = [
    "mean radius", "mean texture", "mean perimeter", "mean area",
    "mean smoothness", "mean compactness", "mean concavity", "mean symmetry",
]  # fmt: skip


def col(name: str) -> str:
    return name.replace(" ", "_")


@dataclass
class Receiver:
    """A local webhook receiver that checks each delivery's HMAC signature."""

    events: list[dict[str, Any]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def start(self) -> Receiver:
        events = self.events

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                ok = verify(
                    SECRET, self.headers["X-Opsgate-Timestamp"], body, self.headers["X-Opsgate-Signature"]
                )
                events.append(
                    {"kind": self.headers["X-Opsgate-Event"], "verified": ok, "body": json.loads(body)}
                )
                self.send_response(200 if ok else 401)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def of(self, kind: str, model: str | None = None) -> list[dict[str, Any]]:
        return [
            e for e in self.events if e["kind"] == kind and (model is None or e["body"].get("model") == model)
        ]


@pytest.fixture(scope="session")
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    assert r.server is not None
    r.server.shutdown()


@dataclass
class Data:
    cancer: pd.DataFrame  # inputs + target
    cancer_model: Any
    diabetes: pd.DataFrame
    sugar_model: Any
    loans_model: Any


def _train() -> Data:
    from sklearn.datasets import load_breast_cancer, load_diabetes
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    bc = load_breast_cancer(as_frame=True)
    cancer = bc.data[CANCER_FEATURES].rename(columns=col)
    cancer_model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(cancer, bc.target)
    cancer = cancer.assign(target=bc.target)
    db = load_diabetes(as_frame=True, scaled=False)
    diabetes = db.data[["age", "bmi", "bp", "s5"]].assign(target=db.target)
    sugar_model = Ridge().fit(diabetes[["age", "bmi", "bp", "s5"]].to_numpy(), db.target)
    rng = np.random.default_rng(7)
    income = rng.uniform(10, 100, 400)
    loans_model = LogisticRegression().fit(income.reshape(-1, 1), (income > 50).astype(int))
    return Data(cancer, cancer_model, diabetes, sugar_model, loans_model)


@pytest.fixture(scope="session")
def data() -> Data:
    return _train()


def loans_reference() -> pd.DataFrame:
    rng = np.random.default_rng(11)
    n = 400
    return pd.DataFrame({"income": rng.uniform(10, 100, n).round(2), "group": rng.choice(["a", "b"], n)})


RETRAIN_SCRIPT = """import json, os, sys
from pathlib import Path
evidence = json.load(sys.stdin)
Path("retrain-calls.jsonl").open("a").write(json.dumps({"ref": os.environ["OPSGATE_MODEL_REF"], **evidence}) + "\\n")
"""


def write_models(root: Path, d: Data) -> None:
    from gateway.ml import register

    schema = {col(c): {"type": "number", "min": 0} for c in CANCER_FEATURES}
    register(
        d.cancer_model,
        "cancer",
        schema,
        d.cancer,
        project_dir=root,
        target="target",
        description="Breast cancer (sklearn's bundled data), logistic regression",
        accuracy={"min": {"accuracy": 0.9}, "min_labelled": 20},
        drift={"min_rows": 50},
        retrain={"on": ["drift"], "command": "cancer_retrain", "cooldown_s": 0},
    )
    register(
        d.sugar_model, "sugar",
        {"age": {"type": "number", "min": 0, "max": 120}, "bmi": {"type": "number"}, "bp": {"type": "number"},
         "s5": {"type": "number"}},
        d.diabetes, project_dir=root, target="target",
    )  # fmt: skip
    register(
        d.loans_model, "loans",
        {"income": {"type": "number", "min": 0}, "group": {"type": "string", "categories": ["a", "b"], "feature": False}},
        loans_reference(), project_dir=root,
        fairness={"protected": ["group"], "favourable": 1, "min_group_size": 20},
        data_quality={"on_violation": "flag"},
    )  # fmt: skip
    (root / "retrain.py").write_text(RETRAIN_SCRIPT, encoding="utf-8")


def git_commit(root: Path, message: str = "models") -> None:
    env = {"GIT_AUTHOR_NAME": "ml", "GIT_AUTHOR_EMAIL": "ml@example.org", "GIT_COMMITTER_NAME": "ml",
           "GIT_COMMITTER_EMAIL": "ml@example.org", "PATH": "/usr/bin:/bin"}  # fmt: skip
    if not (root / ".git").exists():
        subprocess.run(["git", "init", "-q"], cwd=root, check=True, env=env)
    subprocess.run(["git", "add", "-A"], cwd=root, check=True, env=env)
    subprocess.run(["git", "commit", "-q", "-m", message], cwd=root, check=True, env=env)


def gateway_yaml(receiver: Receiver) -> str:
    return (
        "alerts:\n  webhooks:\n"
        f"    - {{url: '{receiver.url}', secret_env: OPSGATE_TEST_WEBHOOK_SECRET, retries: 0}}\n"
        "ml:\n  monitor_interval_s: 0\n  flush_interval_s: 0.05\n"
        "  retrain_commands: {cancer_retrain: [python, retrain.py]}\n" + LOOPBACK_EGRESS_YAML
    )


@pytest.fixture(scope="session")
def ml_project(project_factory: ProjectFactory, data: Data, receiver: Receiver) -> Path:
    root = project_factory()
    (root / "config" / "gateway.yaml").write_text(gateway_yaml(receiver), encoding="utf-8")
    write_models(root, data)
    git_commit(root)
    return root


def start_ml_gateway(
    factory: GatewayFactory, project: Path, database_url: str | None = None
) -> GatewayProcess:
    return factory(project, database_url=database_url, env={"OPSGATE_TEST_WEBHOOK_SECRET": SECRET})


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in frame.to_dict("records")
    ]
