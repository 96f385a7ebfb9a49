"""The demo classic model that `make serve` serves on a fresh install: `breast_cancer`.

    .venv/bin/python -m gateway.ml.demo [--project-dir .]

Writes `config/models/breast_cancer.{skops,reference.csv,yaml}` through `gateway.ml.register`, the same
way a user registers a model. The data is scikit-learn's bundled copy of the Breast Cancer Wisconsin
(Diagnostic) dataset (569 tumours, 30 numeric features; W. Wolberg, W. Street, O. Mangasarian, UCI
Machine Learning Repository, CC BY 4.0). The model is a standard-scaled logistic regression trained on a
fixed 70% split; the reference (the drift baseline) is that training split with its diagnosis.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

NAME = "breast_cancer"
DESCRIPTION = (
    "Demo: malignant or benign tumour from 30 cell-nucleus measurements. Logistic regression on "
    "scikit-learn's copy of the Breast Cancer Wisconsin (Diagnostic) dataset (UCI, CC BY 4.0), 70% split."
)


def demo_data() -> tuple[Any, Any]:
    """The dataset as (features, diagnosis): columns with underscores, labels 'malignant' / 'benign'."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    x = data.data.rename(columns=lambda c: c.replace(" ", "_"))
    y = data.target.map(dict(enumerate(data.target_names))).rename("diagnosis")
    return x, y


def write_demo(project_dir: str | Path = ".") -> Path:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from gateway.ml.register import register

    x, y = demo_data()
    x_train, _x_test, y_train, _y_test = train_test_split(x, y, train_size=0.7, random_state=0, stratify=y)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(x_train, y_train)
    schema = {c: {"type": "number", "min": 0} for c in x.columns}
    reference = x_train.assign(diagnosis=y_train).round(6)
    return register(
        model,
        NAME,
        schema,
        reference,
        project_dir=project_dir,
        target="diagnosis",
        description=DESCRIPTION,
        output={"labels": [str(c) for c in model.classes_], "positive": "malignant"},
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project-dir", default=".")
    print(write_demo(ap.parse_args().project_dir))


if __name__ == "__main__":
    main()
