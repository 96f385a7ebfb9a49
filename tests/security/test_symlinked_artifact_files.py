"""Issue 11, finding 2 (the class): every file the registry reads on an author's behalf, not only prompt
templates. A spec file that is itself a link, a model file or reference dataset that is a link, and `..`
paths are refused by `opsgate sync` (reading git at HEAD) and by `opsgate serve` (reading the working
tree), with one line naming the file (and the spec line that references it); the canary secret outside
the project is never read into the registry, its blob store or any output.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.conftest import ProjectFactory
from tests.fakes.gateway import Cli, commit_project, free_port
from tests.security.conftest import Canary


def model_spec(name: str, model_file: str, reference: str) -> str:
    return (
        f"name: {name}\n"
        f"model: {{file: {model_file}}}\n"
        "inputs: {x: {type: number}}\n"
        f"reference: {{file: {reference}}}\n"
    )


def plant(project: Path, canary: Canary) -> None:
    outside = canary.file.parent
    (outside / "leak.yaml").write_text(
        f"name: leak\nmessages:\n  - role: system\n    content: '{canary.value}'\n", encoding="utf-8"
    )
    (outside / "leakr.yaml").write_text(
        f"name: leakr\ndeployments: [{{id: l, model: local/extractive}}]\ndescription: '{canary.value}'\n",
        encoding="utf-8",
    )
    (project / "prompts").mkdir(exist_ok=True)
    os.symlink(outside / "leak.yaml", project / "prompts" / "leak.yaml")
    os.symlink(outside / "leakr.yaml", project / "config" / "routers" / "leakr.yaml")
    models = project / "config" / "models"
    models.mkdir(parents=True, exist_ok=True)
    os.symlink(canary.file, models / "leakm.skops")
    (models / "leakm.csv").write_text("x\n1\n", encoding="utf-8")
    (models / "leakm.yaml").write_text(model_spec("leakm", "leakm.skops", "leakm.csv"), encoding="utf-8")
    (models / "leakref.skops").write_bytes(b"model bytes")
    os.symlink(canary.file, models / "leakref.csv")
    (models / "leakref.yaml").write_text(
        model_spec("leakref", "leakref.skops", "leakref.csv"), encoding="utf-8"
    )
    (models / "leakup.yaml").write_text(
        model_spec("leakup", "../../../secret.txt", "leakm.csv"), encoding="utf-8"
    )


EXPECTED = {
    "prompts/leak.yaml: is a symbolic link",
    "config/routers/leakr.yaml: is a symbolic link",
    "config/models/leakm.yaml:2: file: 'leakm.skops' (config/models/leakm.skops) is a symbolic link",
    "config/models/leakref.yaml:4: file: 'leakref.csv' (config/models/leakref.csv) is a symbolic link",
    "config/models/leakup.yaml:2: model.file: must be a path relative to the spec's directory, without '..'",
}


def assert_refused(output: str) -> None:
    for expected in EXPECTED:
        assert any(expected in line for line in output.splitlines()), f"{expected!r} not in:\n{output}"


def test_sync_refuses_linked_specs_model_files_reference_data_and_dotdot(
    make_project: ProjectFactory, cli_for: Callable[..., Cli], canary: Canary
) -> None:
    project = make_project()
    plant(project, canary)
    commit_project(project, "a prompt, a router and models")
    cli = cli_for(project, canary.env)
    key = cli.first_admin_key()

    done = cli("sync", "--json", key=key)
    assert done.returncode == 1, done.stdout + done.stderr
    assert_refused("\n".join(json.loads(done.stdout)["errors"]))
    assert not canary.found_in(done.stdout, done.stderr)
    listed = cli("list", "--json").stdout
    assert "leak" not in listed
    assert not any(canary.found_in(p.read_bytes()) for p in cli.data_dir.rglob("*") if p.is_file())


def test_serve_refuses_to_start_on_linked_artifact_files(
    make_project: ProjectFactory, cli_for: Callable[..., Cli], canary: Canary
) -> None:
    project = make_project()
    plant(project, canary)
    cli = cli_for(project, canary.env)
    try:
        done = cli("serve", "--host", "127.0.0.1", "--port", str(free_port()), timeout=90)
    except subprocess.TimeoutExpired as exc:  # it started: what it read is already registered
        raise AssertionError("opsgate serve started on a project whose files are links") from exc
    assert done.returncode == 2, done.stderr
    assert_refused(done.stderr)
    assert "Traceback" not in done.stderr
    assert not canary.found_in(done.stdout, done.stderr)


def test_a_linked_artifact_folder_is_refused_whole(
    make_project: ProjectFactory, cli_for: Callable[..., Cli], canary: Canary
) -> None:
    project = make_project()
    outside = canary.file.parent / "routers"
    shutil.move(project / "config" / "routers", outside)
    (outside / "leakr.yaml").write_text(
        f"name: leakr\ndeployments: [{{id: l, model: local/extractive}}]\ndescription: '{canary.value}'\n",
        encoding="utf-8",
    )
    os.symlink(outside, project / "config" / "routers")
    commit_project(project, "routers elsewhere")
    cli = cli_for(project, canary.env)
    done = cli("sync", "--json", key=cli.first_admin_key())
    assert done.returncode == 1
    errors = json.loads(done.stdout)["errors"]
    assert "config/routers: is a symbolic link in git (mode 120000); opsgate never follows links" in errors
    assert not canary.found_in(done.stdout, done.stderr, cli("list", "--json").stdout)
