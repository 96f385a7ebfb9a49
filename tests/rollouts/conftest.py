"""Rollout fixtures: the registry's real databases, git projects and keys (tests/registry/conftest.py),
and the classic-model training data (tests/ml/conftest.py)."""

from tests.ml.conftest import data
from tests.registry.conftest import engine, fresh_engine, git_project, people, promotions

__all__ = ["data", "engine", "fresh_engine", "git_project", "people", "promotions"]
