"""Accuracy from feedback: predictions joined with the ground truth that arrived for them.

Classification: accuracy, F1 (binary: of the positive class; multiclass: macro), ROC AUC (binary, from
the positive class's probability). Regression: MAE, RMSE, R^2. Judged on the newest `window` labelled
predictions against the spec's floors (`min`) and ceilings (`max`); also shown for 1 h / 24 h / 7 d.
"""

from __future__ import annotations

import math
from typing import Any


def classification_metrics(
    truths: list[Any], labels: list[Any], scores: list[float | None], classes: list[Any], positive: Any
) -> dict[str, Any]:
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    names = [str(c) for c in classes]
    y_true = [str(t) for t in truths]
    y_pred = [str(p) for p in labels]
    out: dict[str, Any] = {"n": len(y_true), "accuracy": float(accuracy_score(y_true, y_pred))}
    if len(names) == 2:
        out["f1"] = float(f1_score(y_true, y_pred, pos_label=str(positive), labels=names, zero_division=0))
        usable = [(t, s) for t, s in zip(y_true, scores, strict=True) if s is not None]
        if usable and len({t for t, _ in usable}) == 2:
            out["auc"] = float(roc_auc_score([t == str(positive) for t, _ in usable], [s for _, s in usable]))
        else:
            out["auc"] = None
    else:
        out["f1"] = float(f1_score(y_true, y_pred, average="macro", labels=names, zero_division=0))
        out["auc"] = None
    return out


def regression_metrics(truths: list[float], values: list[float]) -> dict[str, Any]:
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    out: dict[str, Any] = {
        "n": len(truths),
        "mae": float(mean_absolute_error(truths, values)),
        "rmse": math.sqrt(float(mean_squared_error(truths, values))),
    }
    out["r2"] = float(r2_score(truths, values)) if len(truths) >= 2 else None
    return out


def judge(figures: dict[str, Any], floors: dict[str, float], ceilings: dict[str, float]) -> list[str]:
    broken: list[str] = []
    for metric, floor in floors.items():
        value = figures.get(metric)
        if value is not None and value < floor:
            broken.append(f"{metric} {value:.4f} < {floor}")
    for metric, ceiling in ceilings.items():
        value = figures.get(metric)
        if value is not None and value > ceiling:
            broken.append(f"{metric} {value:.4f} > {ceiling}")
    return broken
