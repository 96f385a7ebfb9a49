"""Issue 11, finding 4: a retraining command written in a model spec.

Attack: a prompt engineer writes `retrain: {command: [python, -c, "print(os.environ[...])"]}` in a model
spec, syncs it and triggers the monitor (`POST /admin/ml/{name}/monitor`); before the fix the command ran
in the gateway and its output, the environment's secrets included, came back in the HTTP answer.

Secure outcome: a command in a spec is refused at sync (in every shape: a list, a shell string, a
mapping); a version registered before the rule still serves, and its command never runs. Commands come
from the operator's `ml.retrain_commands` only (a spec names one); such a command runs in the background,
its output goes to the server log, and no HTTP answer (the monitor's, the run's status) or webhook
delivery (to a loopback listener) ever carries it.
"""

from __future__ import annotations

import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import yaml

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import FAST_GATEWAY_YAML, GatewayProcess, commit_project
from tests.security._ml import FEATURES, make_key, rows, small_model, wait_until

CANARY = "canary-" + secrets.token_hex(12)
LEAK = "import os, sys; sys.stdin.read(); print('leaked=' + os.environ['OPSGATE_TEST_CANARY'])"
BAD_COMMANDS: list[Any] = [
    ["python", "-c", LEAK],
    f'python -c "{LEAK}"',
    {"argv": ["python", "-c", LEAK]},
]


class Listener:
    """A loopback 'attacker' that records whatever is sent to it (here: the alert webhooks)."""

    def __init__(self) -> None:
        self.bodies: list[str] = []
        bodies = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                bodies.append(self.rfile.read(int(self.headers["Content-Length"])).decode())
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"


@pytest.fixture
def listener() -> Iterator[Listener]:
    found = Listener()
    yield found
    found.server.shutdown()


def gateway_yaml(listener: Listener) -> str:
    return FAST_GATEWAY_YAML + yaml.safe_dump(
        {
            "alerts": {"webhooks": [{"url": listener.url, "secret_env": "OPSGATE_TEST_HOOK", "retries": 0}]},
            "ml": {
                "monitor_interval_s": 0,
                "flush_interval_s": 0.05,
                "retrain_commands": {"leak": ["python", "-c", LEAK]},
            },
        }
    )


def write_scored_model(root: Path, model: Any, x: Any, **retrain: Any) -> None:
    from gateway.ml import register

    reference = pd.DataFrame(x[::2], columns=FEATURES).assign(target=model.predict(x[::2]))
    register(
        model,
        "scored",
        {f: {"type": "number"} for f in FEATURES},
        reference,
        project_dir=root,
        target="target",
        drift={"min_rows": 50},
        retrain={"on": ["drift"], "cooldown_s": 0, **retrain},
    )


def refuse_spec_commands(gw: GatewayProcess, project: Path, engineer: str) -> None:
    folder = project / "config" / "models"
    shutil.copy(folder / "scored.skops", folder / "rogue.skops")
    base = yaml.safe_load((folder / "scored.yaml").read_text())
    for command in BAD_COMMANDS:
        data = {**base, "name": "rogue", "model": {"file": "rogue.skops"}, "reference": None}
        data["retrain"] = {**base["retrain"], "command": command}
        (folder / "rogue.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        commit_project(project, "a model that brings its own command")
        done = gw.cli("sync", key=engineer, check=False)
        assert done.returncode != 0, done.stdout
        said = done.stdout + done.stderr
        assert "rogue.yaml" in said and "retrain.command" in said, said
        if isinstance(command, list):
            assert "retrain_commands" in said, said
    (folder / "rogue.yaml").unlink()
    (folder / "rogue.skops").unlink()
    commit_project(project, "no rogue model")
    with gw.http(headers=gw.auth()) as http:
        assert http.get("/v1/ml/rogue@latest").status_code == 404  # never registered


def register_legacy_version(gw: GatewayProcess, project: Path) -> None:
    """A version registered before the rule (its spec holds an argv), as an upgraded database has it."""
    from sqlalchemy.orm import Session

    from gateway.db.engine import make_engine
    from gateway.db.generation import bump_generation, utcnow
    from gateway.db.models import Alias, ArtifactVersion
    from gateway.ml.spec import stored_spec
    from gateway.registry.hashing import canonical_data, content_hash

    folder = project / "config" / "models"
    shutil.copy(folder / "scored.skops", folder / "legacy.skops")
    shutil.copy(folder / "scored.reference.csv", folder / "legacy.reference.csv")
    data = yaml.safe_load((folder / "scored.yaml").read_text())
    data.update(
        name="legacy",
        model={"file": "legacy.skops"},
        reference={**data["reference"], "file": "legacy.reference.csv"},
        retrain={**data["retrain"], "command": ["python", "-c", LEAK]},
    )
    parsed = stored_spec(data, "model:legacy@1")
    files = {n: (folder / n).read_bytes() for n in parsed.referenced_files()}
    engine = make_engine(gw.db_url())
    with Session(engine) as session:  # the rows an older gateway wrote (its audit entries aside)
        session.add(
            ArtifactVersion(
                kind="model",
                name="legacy",
                version=1,
                content_hash=content_hash(parsed, files),
                spec=canonical_data(parsed),
                source_path="config/models/legacy.yaml",
                dirty=False,
                created_at=utcnow(),
                created_by="before-the-upgrade",
            )
        )
        for alias in ("latest", "production"):
            session.add(
                Alias(
                    kind="model", name="legacy", alias=alias, version=1, updated_at=utcnow(), updated_by="x"
                )
            )
        bump_generation(session)
        session.commit()
    engine.dispose()


def drift(http: httpx.Client, name: str, x: Any) -> dict[str, Any]:
    """Score a shifted subset (the largest tumours), then judge: drift breaches, retraining triggers."""
    shifted = x[x[:, 0].argsort()[-120:]]
    r = http.post(f"/v1/ml/{name}/predict", json={"records": rows(shifted, len(shifted))})
    assert r.status_code == 200, r.text
    judged = http.post(f"/admin/ml/{name}/monitor")
    assert judged.status_code == 200, judged.text
    assert CANARY not in judged.text
    found: dict[str, Any] = judged.json()
    assert found["drift"]["dataset_drift"] is True
    return found


def test_retraining_runs_only_operator_commands_and_never_answers_their_output(
    make_project: ProjectFactory, start_gateway: GatewayFactory, listener: Listener
) -> None:
    model, x = small_model()
    project = make_project(files={"config/gateway.yaml": gateway_yaml(listener)})
    write_scored_model(project, model, x, command="leak")
    commit_project(project, "a model naming the operator's command")
    env = {"OPSGATE_TEST_CANARY": CANARY, "OPSGATE_TEST_HOOK": "whsec-" + secrets.token_hex(8)}
    gw = start_gateway(project, env=env)
    engineer = make_key(gw, "engineer", "prompt-engineer")

    refuse_spec_commands(gw, project, engineer)
    register_legacy_version(gw, project)
    with gw.http(headers=gw.auth(engineer), timeout=120) as http:
        wait_until(lambda: http.get("/v1/ml/legacy").status_code == 200)
        legacy = drift(http, "legacy", x)  # serves; its own command is refused, never run
        assert legacy["retrain"]["command"]["status"] == "refused"
        time.sleep(1)
        assert CANARY not in gw.output()

        found = drift(http, "scored", x)  # the operator's command: runs, in the background
        command = found["retrain"]["command"]
        assert set(command) == {"name", "run_id", "status"} and command["name"] == "leak"
        run = http.get(f"/admin/ml/scored/retrain/{command['run_id']}")
        deadline = time.monotonic() + 60
        while run.json()["status"] == "running" and time.monotonic() < deadline:
            time.sleep(0.1)
            run = http.get(f"/admin/ml/scored/retrain/{command['run_id']}")
        assert run.json()["status"] == "succeeded" and run.json()["exit_code"] == 0, run.text
        assert CANARY not in run.text
        missing = http.get("/admin/ml/scored/retrain/run_nope")
        assert missing.status_code == 404
    wait_until(lambda: f"leaked={CANARY}" in gw.output())  # it ran: its output is in the server log only
    assert len(listener.bodies) >= 3  # drift alerts and the retrain event reached the webhook ...
    assert not any(CANARY in b for b in listener.bodies)  # ... without the command's output
