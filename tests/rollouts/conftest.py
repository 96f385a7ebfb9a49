"""Rollout fixtures: the registry's real databases, git projects and keys (tests/registry/conftest.py)."""

from tests.registry.conftest import engine, fresh_engine, git_project, people, promotions

__all__ = ["engine", "fresh_engine", "git_project", "people", "promotions"]
