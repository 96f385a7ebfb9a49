"""Issue 11, finding 13: `opsgate.db` (and the data directory holding it, the admin key and the blobs)
was created readable by every user of the machine. A fresh data directory is created 0700 and the SQLite
file 0600 (SQLite gives its WAL and shared-memory files the same mode), whichever command creates them.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import ProjectFactory
from tests.fakes.gateway import Cli


@pytest.fixture
def lax_umask() -> Iterator[None]:
    """The common default: without care, files come out 0644 and directories 0755."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("command", [("keys", "create", "--name", "owner", "--role", "admin"), ("list",)])
def test_a_new_data_dir_and_database_are_private(
    command: tuple[str, ...],
    make_project: ProjectFactory,
    cli_for: Callable[..., Cli],
    tmp_path: Path,
    lax_umask: None,
) -> None:
    data_dir = tmp_path / "fresh" / "data"
    cli = cli_for(make_project(), {"OPSGATE_DATA_DIR": str(data_dir)})
    done = cli(*command)
    assert done.returncode == 0, done.stderr
    assert mode(data_dir) == 0o700
    assert mode(data_dir / "opsgate.db") == 0o600
