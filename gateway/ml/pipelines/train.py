"""Split, featurize, fit (or search), measure and gate: the scikit-learn part of a pipeline run.

The model is one scikit-learn Pipeline: a ColumnTransformer of the file's feature steps (columns by
position, so the served model scores the gateway's numeric matrix and its DataFrames alike) and the
estimator. A search is GridSearchCV or RandomizedSearchCV over the estimator's parameters with the
stated folds. With `engine: {backend: dask}` the search's fits run on a Dask cluster through joblib.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from gateway.ml.pipelines import catalog
from gateway.ml.pipelines.spec import PipelineSpec


@dataclass
class Split:
    x_train: Any
    x_test: Any
    y_train: Any
    y_test: Any
    description: str


@dataclass
class Trained:
    model: Any
    best_params: dict[str, Any] = field(default_factory=dict)
    cv_score: float | None = None
    candidates: int = 1


def split(spec: PipelineSpec, x: Any, y: Any, order: Any) -> Split:
    s = spec.split
    if s.method == "time":
        import pandas as pd

        key = pd.to_datetime(order, errors="coerce") if order.dtype == object else order
        if bool(key.isna().any()):
            raise ValueError(f"split.column {s.column!r} holds values that are not times or numbers")
        ranked = key.sort_values(kind="stable").index
        n_test = max(1, math.ceil(len(ranked) * s.test_size))
        train_idx, test_idx = ranked[:-n_test], ranked[-n_test:]
        desc = f"time split on {s.column}: the newest {n_test} of {len(ranked)} rows are the test set"
        return Split(
            x.loc[train_idx].reset_index(drop=True),
            x.loc[test_idx].reset_index(drop=True),
            y.loc[train_idx].reset_index(drop=True),
            y.loc[test_idx].reset_index(drop=True),
            desc,
        )
    from sklearn.model_selection import train_test_split

    stratify = y if (s.stratify and spec.task == "classification") else None
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=s.test_size, random_state=s.seed, stratify=stratify
    )
    desc = (
        f"random split, seed {s.seed}, test share {s.test_size:g}"
        f"{' (stratified by the label)' if stratify is not None else ''}:"
        f" {len(x_train)} train, {len(x_test)} test rows"
    )
    return Split(
        x_train.reset_index(drop=True),
        x_test.reset_index(drop=True),
        y_train.reset_index(drop=True),
        y_test.reset_index(drop=True),
        desc,
    )


def features(spec: PipelineSpec) -> list[str]:
    return [n for n, f in spec.produces.inputs.items() if f.feature]


def build_model(spec: PipelineSpec) -> Any:
    """The unfitted scikit-learn Pipeline the file describes (allow-listed classes only)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline, make_pipeline

    estimator = catalog.build(catalog.ESTIMATORS, spec.estimator.name, spec.estimator.params, "estimator")
    if not spec.features:
        return Pipeline([("model", estimator)])
    position = {name: i for i, name in enumerate(features(spec))}
    steps = []
    for i, step in enumerate(spec.features):
        parts = [
            "passthrough"
            if name == "passthrough"
            else catalog.build(catalog.TRANSFORMERS, name, p, "transformer")
            for name, p in zip(step.names, step.param_list(), strict=True)
        ]
        real = [p for p in parts if p != "passthrough"]
        transformer: Any = "passthrough" if not real else real[0] if len(real) == 1 else make_pipeline(*real)
        steps.append((f"step{i}", transformer, [position[c] for c in step.columns]))
    prep = ColumnTransformer(steps, remainder=spec.remainder)
    return Pipeline([("prepare", prep), ("model", estimator)])


def scorer(spec: PipelineSpec, metric: str, positive: Any, classes: list[Any]) -> Any:
    """The search's scoring for a metric (binary F1/precision/recall of the stated positive class)."""
    from sklearn.metrics import f1_score, make_scorer, precision_score, recall_score

    name = catalog.METRICS[metric][0]
    if spec.task == "classification" and metric in ("f1", "precision", "recall"):
        func = {"f1": f1_score, "precision": precision_score, "recall": recall_score}[metric]
        if len(classes) == 2:
            return make_scorer(func, pos_label=positive, zero_division=0)
        return make_scorer(func, average="macro", zero_division=0)
    if metric == "auc" and len(classes) > 2:
        return "roc_auc_ovr"
    return name


@contextmanager
def joblib_backend(address: str | None) -> Iterator[Any]:
    """Run the block's joblib work (scikit-learn's n_jobs) on a Dask cluster when `address` is given."""
    if address is None:
        yield None
        return
    import joblib
    from distributed import Client

    with Client(address, timeout="20s") as client, joblib.parallel_backend("dask"):  # type: ignore[no-untyped-call]
        yield client


def fit(
    spec: PipelineSpec, data: Split, positive: Any, classes: list[Any], *, dask: str | None = None
) -> Trained:
    model = build_model(spec)
    x = data.x_train[features(spec)]
    search = spec.search
    with joblib_backend(dask):
        if search is None:
            model.fit(x, data.y_train)
            return Trained(model)
        from sklearn.model_selection import GridSearchCV, RandomizedSearchCV

        grid = {f"model__{k}": v for k, v in search.params.items()}
        scoring = scorer(spec, search.scoring, positive, classes)
        n_jobs = spec.engine.n_jobs if spec.engine.n_jobs != 1 or dask is None else -1
        if search.type == "grid":
            finder: Any = GridSearchCV(model, grid, cv=search.cv, scoring=scoring, n_jobs=n_jobs, refit=True)
        else:
            finder = RandomizedSearchCV(
                model,
                grid,
                n_iter=search.n_iter,
                cv=search.cv,
                scoring=scoring,
                n_jobs=n_jobs,
                random_state=search.seed,
                refit=True,
            )
        finder.fit(x, data.y_train)
    best = {k.removeprefix("model__"): _plain(v) for k, v in finder.best_params_.items()}
    score = float(finder.best_score_)
    if not catalog.METRICS[search.scoring][2]:
        score = -score  # scikit-learn maximises neg_* scores: report the metric itself
    return Trained(finder.best_estimator_, best, score, len(finder.cv_results_["params"]))


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def positive_class(spec: PipelineSpec, classes: list[Any]) -> Any:
    wanted = spec.produces.output.positive
    if wanted is None:
        return classes[-1]
    for c in classes:
        if c == wanted or str(c) == str(wanted):
            return c
    raise ValueError(f"produces.output.positive {wanted!r} is not a label of the data ({classes})")


def measure(spec: PipelineSpec, model: Any, x: Any, y: Any, positive: Any) -> dict[str, float | None]:
    """The validation metrics of a fitted model on (x, y): plain scikit-learn metric functions."""
    from sklearn import metrics as m

    cols = list(getattr(model, "feature_names_in_", features(spec)))
    xs = x[[str(c) for c in cols]]
    pred = model.predict(xs)
    out: dict[str, float | None] = {}
    if spec.task == "regression":
        for name in spec.metrics:
            if name == "r2":
                out[name] = float(m.r2_score(y, pred))
            elif name == "mae":
                out[name] = float(m.mean_absolute_error(y, pred))
            elif name == "rmse":
                out[name] = float(m.root_mean_squared_error(y, pred))
        return out
    classes = list(model.classes_)
    binary = len(classes) == 2
    proba = model.predict_proba(xs) if hasattr(model, "predict_proba") else None
    for name in spec.metrics:
        if name == "accuracy":
            out[name] = float(m.accuracy_score(y, pred))
        elif name == "balanced_accuracy":
            out[name] = float(m.balanced_accuracy_score(y, pred))
        elif name in ("f1", "precision", "recall"):
            func = {"f1": m.f1_score, "precision": m.precision_score, "recall": m.recall_score}[name]
            kw: dict[str, Any] = {"pos_label": positive} if binary else {"average": "macro"}
            out[name] = float(func(y, pred, zero_division=0, **kw))
        elif name == "auc":
            if proba is None or len(set(y.tolist())) < 2:
                out[name] = None
            elif binary:
                out[name] = float(m.roc_auc_score(y == positive, proba[:, classes.index(positive)]))
            else:
                out[name] = float(m.roc_auc_score(y, proba, multi_class="ovr", labels=classes))
        elif name == "log_loss":
            out[name] = float(m.log_loss(y, proba, labels=classes)) if proba is not None else None
    return out
