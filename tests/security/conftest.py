"""Security fixtures: canary secrets planted outside the project and in the gateway's environment."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

import pytest


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
