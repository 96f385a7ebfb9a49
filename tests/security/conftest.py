"""Security fixtures: canary secrets planted outside the project, and the `opsgate` CLI on a project with
its own data directory (no gateway needed for the commands that read files: sync, index build, keys)."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.fakes.gateway import OPSGATE, subprocess_env


@dataclass
class Canary:
    """A secret the attacker wants: in a file outside the project, and in the gateway's environment."""

    value: str
    file: Path  # outside the project, readable by the gateway's user
    env: dict[str, str] = field(default_factory=dict)

    def found_in(self, *texts: object) -> bool:
        return any(self.value in str(text) for text in texts)


@pytest.fixture
def canary(tmp_path_factory: pytest.TempPathFactory) -> Canary:
    value = "opsgate-canary-" + secrets.token_hex(12)
    outside = tmp_path_factory.mktemp("outside-the-project")
    file = outside / "secret.txt"
    file.write_text(f"the secret is {value}\n", encoding="utf-8")
    return Canary(value, file, {"OPSGATE_TEST_CANARY": value})


@dataclass
class Cli:
    """`opsgate` run as a user runs it, in a project with its own data directory."""

    project: Path
    data_dir: Path
    env: dict[str, str]

    def __call__(
        self, *args: str, key: str | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        env = dict(self.env)
        if key is not None:
            env["OPSGATE_API_KEY"] = key
        return subprocess.run(
            [OPSGATE, *args],
            cwd=self.project,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def first_admin_key(self) -> str:
        done = self("keys", "create", "--name", "owner", "--role", "admin")
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()[-1]


@pytest.fixture
def cli_for(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Cli]:
    def make(project: Path, extra_env: dict[str, str] | None = None) -> Cli:
        data_dir = tmp_path_factory.mktemp("data")
        env = subprocess_env(
            {"OPSGATE_PROJECT_DIR": str(project), "OPSGATE_DATA_DIR": str(data_dir), **(extra_env or {})}
        )
        env.pop("OPSGATE_API_KEY", None)
        return Cli(project, data_dir, env)

    return make
