"""Attack: `opsgate ml monitor` loads a file that runs code through an alias that only the governance
file, not the rules in force, protects.

Unsafe model files (pickle, joblib) load only when the operator trusts the model and a protected alias
points at the version (tests/security/test_model_code_execution.py). The gateway takes "protected" from the
governance rules version at production; `opsgate ml monitor` (and a pipeline's comparison with production)
took it from `config/gateway.yaml` as committed. A prompt engineer commits `canary` as protected (a
governance change nobody approved, so not in force), moves `canary` to their version at once (it moves
freely under the rules in force), and the operator's next `opsgate ml monitor` runs the pickle: the canary
file appears. Now both follow the rules in force, like the gateway.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import FAST_GATEWAY_YAML, commit_project
from tests.security._ml import PickleCanary, make_key, small_model, spec

TRUSTED = FAST_GATEWAY_YAML + "ml:\n  trusted_models: [evil_pickle]\n"
CANARY_PROTECTED = (
    TRUSTED + "governance:\n  protected_aliases:\n    staging: {}\n    production: {}\n    canary: {}\n"
)


def test_ml_monitor_follows_the_protected_aliases_in_force(
    make_project: ProjectFactory, start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    model, _ = small_model()
    canary = tmp_path / "evil_pickle.canary"
    project = make_project(files={"config/gateway.yaml": TRUSTED})
    commit_project(project, "the operator trusts evil_pickle")
    gw = start_gateway(project)  # the first start registers the committed rules: staging, production
    engineer = make_key(gw, "engineer", "prompt-engineer")

    folder = project / "config" / "models"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "evil_pickle.pkl").write_bytes(pickle.dumps(PickleCanary(canary, model)))
    (folder / "evil_pickle.yaml").write_text(
        spec("evil_pickle", "evil_pickle.pkl", "pickle"), encoding="utf-8"
    )
    (project / "config" / "gateway.yaml").write_text(CANARY_PROTECTED, encoding="utf-8")
    commit_project(project, "a model, and canary protected")
    synced = gw.cli("sync", key=engineer).stdout
    assert "model:evil_pickle@1" in synced and "governance:governance@2" in synced, synced
    moved = gw.cli("promote", "model:evil_pickle@1", "--to", "canary", key=engineer)
    assert "applied" in moved.stdout.lower() or moved.returncode == 0, moved.stdout

    out = gw.cli("ml", "monitor", "evil_pickle", key=gw.admin_key, check=False)
    assert not canary.exists(), "the pickle ran: canary counted as protected though the rules in force do not"
    assert "cannot be loaded" in out.stdout + out.stderr, out.stdout + out.stderr
