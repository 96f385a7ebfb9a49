"""Issue 11 retried through the eval gate: an alias rule's `require_eval` was met by any `eval_runs` row
marked passed, and eval runs were not in the audit chain, so a database writer who inserted a passing
run (or flipped a failed one to passed) satisfied the gate, and the promotion then applied with entries
the gateway wrote itself. A saved run now writes an `eval.run` entry, and the gate counts only a run the
chain records as passed. Real CLI, SQLite.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import create_engine, text

from tests.conftest import ProjectFactory
from tests.fakes.gateway import Cli, commit_project

PROMPT = "name: hello\nmessages:\n  - {role: system, content: 'Hi, version %d.'}\n"


def test_a_passing_run_written_into_the_database_does_not_meet_the_eval_gate(
    make_project: ProjectFactory, cli_for: Callable[..., Cli]
) -> None:
    project = make_project(files={"prompts/hello.yaml": PROMPT % 1})
    config = project / "config" / "gateway.yaml"
    text_ = config.read_text(encoding="utf-8")
    config.write_text(
        text_.replace("# require_eval: {suite: squad_small}", "require_eval: {suite: qa}"), encoding="utf-8"
    )
    commit_project(project, "production needs the qa suite")
    cli = cli_for(project)
    admin = cli.first_admin_key()
    assert cli("sync", key=admin).returncode == 0
    (project / "prompts" / "hello.yaml").write_text(PROMPT % 2, encoding="utf-8")
    commit_project(project, "v2")
    assert cli("sync", key=admin).returncode == 0
    refused = cli("promote", "prompt:hello@2", "--to", "production", key=admin)
    assert refused.returncode == 1 and "no passing run of eval suite 'qa'" in refused.stderr, refused.stderr

    engine = create_engine(f"sqlite:///{cli.data_dir / 'opsgate.db'}")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO eval_runs (id, suite, target_kind, target_name, target_version, versions, status,"
                " passed, cases, errors, started_at, finished_at, summary, tool_versions, created_by)"
                " VALUES ('run_forged', 'qa', 'prompt', 'hello', 2, '[]', 'passed', 1, 1, 0,"
                " '2026-01-01 00\\:00\\:00', '2026-01-01 00\\:00\\:01', '{}', '{}', 'x')"
            )
        )
    engine.dispose()
    forged = cli("promote", "prompt:hello@2", "--to", "production", key=admin)
    assert forged.returncode == 1, forged.stdout
    assert "the audit chain does not record as passed" in forged.stderr and "run_forged" in forged.stderr
