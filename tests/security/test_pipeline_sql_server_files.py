"""Attack: a pipeline's SQL source (an author's file) reads files on the database server.

The operator names a database by environment variable (`ml.pipelines.databases`), and the query runs in
a read-only transaction. But a read-only SELECT still calls `pg_read_file`: with a role that is a
superuser (or a member of pg_read_server_files), `opsgate pipeline run credit@latest` on an unapproved
spec read a file on the database server, and the cast error printed (and stored in the run's report) its
contents. Before the fix the canary below was in the CLI's output. Now a pipeline query runs only as a
role that cannot reach the server's files: anything else is refused before the query, naming what to
configure.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fakes.gateway import Cli, commit_project
from tests.ml.pipelines.conftest import credit_pipeline, credit_project, write_pipeline

__all__ = ["credit_project"]  # fixtures

pytestmark = pytest.mark.postgres


@pytest.fixture
def server_file() -> Iterator[tuple[Path, str]]:
    """A file the database server can read (it runs as its own user on this machine): the secret."""
    value = "opsgate-canary-" + secrets.token_hex(12)
    folder = Path(tempfile.mkdtemp(prefix="opsgate-server-file-"))
    folder.chmod(0o755)
    file = folder / "secret.txt"
    file.write_text(value, encoding="utf-8")
    file.chmod(0o644)
    yield file, value
    shutil.rmtree(folder)


def test_a_pipeline_query_never_runs_as_a_role_that_reads_server_files(
    credit_project: Path,
    new_pg_database: Callable[[], str],
    cli_for: Callable[..., Cli],
    server_file: tuple[Path, str],
) -> None:
    file, secret = server_file
    (credit_project / "config" / "gateway.yaml").write_text(
        "ml:\n  pipelines:\n    databases: {warehouse: WAREHOUSE_URL}\n", encoding="utf-8"
    )
    query = f"SELECT CAST(pg_read_file('{file}') AS integer) AS age, 1 AS risk"
    write_pipeline(credit_project, credit_pipeline(source={"sql": query, "database": "warehouse"}))
    commit_project(credit_project, "a pipeline that reads the warehouse")
    superuser_url = new_pg_database()  # the test server's trust login: postgres, a superuser
    cli = cli_for(credit_project, {"WAREHOUSE_URL": superuser_url})
    key = cli.first_admin_key()
    assert cli("sync", key=key).returncode == 0

    done = cli("pipeline", "run", "credit@latest", "--no-progress", key=key)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert secret not in output
    assert "can read files on the database server" in output, output
    assert "ml.pipelines.databases" in output
    assert "Traceback" not in output
    data_dir = Path(cli.env["OPSGATE_DATA_DIR"])
    for path in data_dir.rglob("*"):
        if path.is_file() and not os.path.islink(path):
            assert secret.encode() not in path.read_bytes(), path
