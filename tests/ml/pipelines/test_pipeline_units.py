"""Small pieces, without a registry: the time split keeps the newest rows for the test set; `fix` makes a
nullable field's bad cell missing (for an imputer) and clips ranges; the allow-listed steps build the
scikit-learn objects the file names."""

from __future__ import annotations

from typing import Any

import pandas as pd

from gateway.ml.pipelines import data, train
from gateway.ml.pipelines.spec import PipelineSpec


def _spec(**changes: Any) -> PipelineSpec:
    base: dict[str, Any] = {
        "name": "p",
        "model": "m",
        "source": {"file": "d.csv"},
        "target": "y",
        "split": {"method": "time", "column": "day", "test_size": 0.25},
        "cleaning": {"categories": "fix", "max": "fix"},
        "features": [
            {
                "columns": ["x"],
                "transformer": ["SimpleImputer", "StandardScaler"],
                "params": [{"strategy": "median"}, {}],
            },
            {
                "columns": ["c"],
                "transformer": ["SimpleImputer", "OneHotEncoder"],
                "params": [{"strategy": "most_frequent"}, {"handle_unknown": "ignore"}],
            },
        ],
        "estimator": {"name": "LogisticRegression"},
        "produces": {
            "inputs": {
                "x": {"type": "number", "max": 10},
                "c": {"type": "string", "categories": ["a", "b"], "nullable": True},
            }
        },
    }
    base.update(changes)
    return PipelineSpec.model_validate(base)


def test_time_split_tests_on_the_newest_rows_and_fix_rules() -> None:
    spec = _spec()
    frame = pd.DataFrame(
        {
            "day": ["2026-01-0" + str(d) for d in (8, 1, 2, 3, 4, 5, 6, 7)],
            "x": [1.0, 2.0, 50.0, 4.0, 5.0, 6.0, 7.0, 8.0],
            "c": ["a", "b", "a", "zzz", "b", "a", "b", "a"],
            "y": [1, 0, 1, 0, 1, 0, 1, 0],
        }
    )
    cleaned = data.clean(spec, data.Loaded(frame, "h", "mem"))
    assert cleaned.report["rules"] == {
        "max": {"dropped": 0, "fixed": 1},
        "categories": {"dropped": 0, "fixed": 1},
    }
    assert cleaned.x["x"].tolist()[2] == 10.0 and cleaned.x["c"].tolist()[3] is None
    parts = train.split(spec, cleaned.x, cleaned.y, cleaned.order)
    assert "newest 2 of 8" in parts.description
    assert sorted(parts.x_test["x"].tolist()) == [1.0, 8.0]  # 2026-01-08 and 2026-01-07
    model = train.build_model(spec).fit(parts.x_train[["x", "c"]], parts.y_train)
    assert [type(s).__name__ for _, s in model.named_steps["prepare"].transformers_[0][1].steps] == [
        "SimpleImputer",
        "StandardScaler",
    ]
