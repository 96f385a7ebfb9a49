"""`opsgate pipeline run` as a user runs it: sync, run (stages, metrics, gates, report), the candidate in
`opsgate list`; a failing gate exits 1 naming the gate, and registers nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.fakes.gateway import commit_project
from tests.ml.pipelines.conftest import credit_pipeline, write_pipeline


def test_cli_run_registers_a_candidate_then_a_failing_gate_registers_nothing(
    credit_project: Path, cli_for: Any
) -> None:
    cli = cli_for(credit_project)
    key = cli.first_admin_key()
    assert cli("sync", key=key).returncode == 0
    done = cli("pipeline", "run", "credit", "--no-progress", key=key)
    assert done.returncode == 0, done.stderr
    assert "registered model:credit@1" in done.stdout
    assert "gate       pass  auc >= 0.6" in done.stdout
    assert "cleaning   1000 rows in, 1000 out (max: 0 dropped, 6 fixed)" in done.stdout
    assert "model:credit" in cli("list", "model").stdout

    spec = credit_pipeline()
    spec["validation"]["gates"] = [{"metric": "accuracy", "min": 0.99}]
    write_pipeline(credit_project, spec)
    commit_project(credit_project, "strict")
    assert cli("sync", key=key).returncode == 0
    failed = cli("pipeline", "run", "credit@latest", "--no-progress", key=key)
    assert failed.returncode == 1
    assert "gate failed, nothing registered: accuracy >= 0.99" in failed.stderr
    listed = cli("list", "model", "--json").stdout
    assert '"credit@2' not in listed and "model:credit@2" not in listed

    assert cli("pipeline", "run", "credit").returncode == 1  # no key: no run
