"""A project with the German credit data (tests/ml/data, DbCL 1.0: see its README) and a pipeline that
trains a loan model from it: one-hot categories, scaled numbers, a small grid of logistic regressions."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fakes.gateway import commit_project

DATA = Path(__file__).resolve().parents[1] / "data" / "german_credit.csv"
CATEGORIES = ["housing", "saving_accounts", "checking_account", "purpose"]
NUMBERS = ["credit_amount", "duration", "age", "job"]


def credit_pipeline(**changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "credit",
        "model": "credit",
        "source": {"file": "data/german_credit.csv"},
        "target": "risk",
        "cleaning": {"max": "fix"},
        "split": {"method": "random", "test_size": 0.3, "seed": 7},
        "features": [
            {"columns": CATEGORIES, "transformer": "OneHotEncoder", "params": {"handle_unknown": "ignore"}},
            {"columns": NUMBERS, "transformer": "StandardScaler"},
        ],
        "estimator": {"name": "LogisticRegression", "params": {"max_iter": 2000}},
        "search": {"type": "grid", "params": {"C": [0.1, 1.0]}, "cv": 3, "scoring": "auc"},
        "validation": {
            "metrics": ["auc", "accuracy", "f1"],
            "gates": [{"metric": "auc", "min": 0.6}, {"metric": "auc", "max_drop_vs_production": 0.02}],
            "fairness": False,
        },
        "produces": {
            "inputs": {
                "sex": {"type": "string", "categories": ["male", "female"], "feature": False},
                "job": {"type": "integer", "min": 0, "max": 3},
                "housing": {"type": "string", "categories": ["own", "rent", "free"]},
                "saving_accounts": {"type": "string"},
                "checking_account": {"type": "string"},
                "credit_amount": {"type": "number", "min": 0},
                "duration": {"type": "integer", "min": 1},
                "purpose": {"type": "string"},
                "age": {"type": "integer", "min": 18, "max": 70},
            },
            "output": {"positive": 1},
            "fairness": {"protected": ["sex"], "favourable": 1, "min_group_size": 20},
        },
    }
    spec.update(changes)
    return spec


def write_pipeline(project: Path, spec: dict[str, Any], name: str = "credit") -> None:
    folder = project / "config" / "pipelines"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")


@pytest.fixture
def credit_project(make_project: Any) -> Path:
    project: Path = make_project()
    (project / "data").mkdir()
    shutil.copy(DATA, project / "data" / "german_credit.csv")
    write_pipeline(project, credit_pipeline())
    commit_project(project, "credit pipeline")
    return project
