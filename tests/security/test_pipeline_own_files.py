"""Attack: a pipeline's `source.file` names a file opsgate keeps for itself inside the project.

The data directory (`.opsgate/` by default, or wherever OPSGATE_DATA_DIR puts it inside the project) holds
the verified copies of every model version's files, reference datasets included: the training splits of
other pipelines, which may come from a warehouse table the author cannot query. Index sources never match
`.git`, `.opsgate` or the data directory; a pipeline's `source.file` could name them (before the fix the
thief pipeline below trained on another model's reference data). Now `opsgate sync` refuses `.git/` and
`.opsgate/` at the line, and a run refuses the data directory wherever it is.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.fakes.gateway import commit_project, project_cli
from tests.ml.pipelines.conftest import credit_pipeline, credit_project, write_pipeline
from tests.security.egress_fakes import line_of

__all__ = ["credit_project"]  # fixtures


def test_a_pipeline_never_reads_what_opsgate_keeps_for_itself(credit_project: Path) -> None:
    project = credit_project
    with (project / ".gitignore").open("a", encoding="utf-8") as ignore:
        ignore.write("state/\n")
    commit_project(project, "the data directory lives in the project")
    cli = project_cli(project, project / "state")
    key = cli.first_admin_key()
    assert cli("sync", key=key).returncode == 0
    trained = cli("pipeline", "run", "credit", "--no-progress", key=key)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    (reference,) = (project / "state").rglob("*.reference.csv")  # the model's training split, with labels
    stolen = reference.relative_to(project).as_posix()

    write_pipeline(project, credit_pipeline(name="thief", model="thief", source={"file": stolen}), "thief")
    commit_project(project, "a pipeline on the blob store")
    assert cli("sync", key=key).returncode == 0  # the spec cannot know where the data directory is
    run = cli("pipeline", "run", "thief@latest", "--no-progress", key=key)
    output = run.stdout + run.stderr
    assert run.returncode != 0, output
    assert f"source.file {stolen!r} is in a folder opsgate keeps for itself" in output
    assert "registered model:thief" not in output

    spec = credit_pipeline(name="thief", model="thief", source={"file": ".opsgate/blobs/x/credit.csv"})
    write_pipeline(project, spec, "thief")
    commit_project(project, "a pipeline on the default data directory")
    refused = cli("sync", key=key)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    text = yaml.safe_dump(spec, sort_keys=False)
    line = line_of(text, "file: .opsgate/")
    assert f"config/pipelines/thief.yaml:{line}: source.file: " in refused.stderr, refused.stderr
    assert "names a file opsgate keeps for itself" in refused.stderr
