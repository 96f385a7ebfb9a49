"""A class a skops file can name: constructing it (skops calls __setstate__) writes a canary file. The
gateway subprocess can import it (the tests' source tree is on its path), as an attacker's own module
on the server would be."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class SkopsCanary:
    def __init__(self, canary: str) -> None:
        self.canary = canary

    def __setstate__(self, state: dict[str, Any]) -> None:
        Path(state["canary"]).write_text("pwned", encoding="utf-8")
        self.__dict__.update(state)
