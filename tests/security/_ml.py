"""Helpers for the classic-model attack tests: a small real model, model files carrying payloads, specs,
keys and the git steps a prompt engineer takes (write, commit, `opsgate sync`)."""

from __future__ import annotations

import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tests.fakes.gateway import GatewayProcess

FEATURES = ["f0", "f1", "f2", "f3"]


def small_model() -> tuple[Any, np.ndarray]:
    """A logistic regression on four columns of scikit-learn's bundled breast cancer data, and its rows."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression

    bc = load_breast_cancer()
    x = bc.data[:, :4]
    return LogisticRegression(max_iter=5000).fit(x, bc.target), x


class PickleCanary:
    """Unpickling runs `eval`: it writes the canary file, then hands back a working model (so a load that
    should not have happened also looks like a success)."""

    def __init__(self, canary: Path, model: Any) -> None:
        self.code = (
            f"(__import__('pathlib').Path({str(canary)!r}).write_text('pwned'),"
            f" __import__('pickle').loads({pickle.dumps(model)!r}))[1]"
        )

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (eval, (self.code,))


def spec(name: str, file: str, fmt: str, **model: Any) -> str:
    data = {
        "name": name,
        "model": {"file": file, "format": fmt, **model},
        "task": "classification",
        "inputs": {f: {"type": "number"} for f in FEATURES},
        "feature_order": FEATURES,
        "output": {"labels": [0, 1]},
    }
    return yaml.safe_dump(data, sort_keys=False)


def rows(x: np.ndarray, n: int = 3) -> list[dict[str, float]]:
    return [dict(zip(FEATURES, map(float, r), strict=True)) for r in x[:n]]


def make_key(gw: GatewayProcess, name: str, role: str, *allow: str) -> str:
    args = ["keys", "create", "--name", name, "--role", role, "--principal", f"{name}@example.org"]
    for pattern in allow:
        args += ["--allow", pattern]
    key = gw.cli(*args, key=gw.admin_key).stdout.strip().splitlines()[-1]
    gw.wait_for_key(key)
    return key


def wait_until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the gateway did not pick up the change in time"
        time.sleep(0.05)
