"""The scikit-learn classes a pipeline file may name, by name: nothing else can be instantiated.

A pipeline file is written by a prompt engineer and must not be able to run code. It names transformers
and estimators from these allow-lists (never an import path) and gives their parameters as plain data
(numbers, strings, booleans, lists): scikit-learn checks the parameters, and no parameter of these classes
turns a string into code. Classes whose parameters take callables (FunctionTransformer, custom scorers)
are left out on purpose.
"""

from __future__ import annotations

import importlib
from typing import Any

TRANSFORMERS: dict[str, str] = {
    "StandardScaler": "sklearn.preprocessing",
    "MinMaxScaler": "sklearn.preprocessing",
    "MaxAbsScaler": "sklearn.preprocessing",
    "RobustScaler": "sklearn.preprocessing",
    "Normalizer": "sklearn.preprocessing",
    "PowerTransformer": "sklearn.preprocessing",
    "QuantileTransformer": "sklearn.preprocessing",
    "KBinsDiscretizer": "sklearn.preprocessing",
    "PolynomialFeatures": "sklearn.preprocessing",
    "OneHotEncoder": "sklearn.preprocessing",
    "OrdinalEncoder": "sklearn.preprocessing",
    "SimpleImputer": "sklearn.impute",
    "KNNImputer": "sklearn.impute",
    "VarianceThreshold": "sklearn.feature_selection",
    "PCA": "sklearn.decomposition",
}

CLASSIFIERS: dict[str, str] = {
    "LogisticRegression": "sklearn.linear_model",
    "RidgeClassifier": "sklearn.linear_model",
    "SGDClassifier": "sklearn.linear_model",
    "DecisionTreeClassifier": "sklearn.tree",
    "RandomForestClassifier": "sklearn.ensemble",
    "ExtraTreesClassifier": "sklearn.ensemble",
    "GradientBoostingClassifier": "sklearn.ensemble",
    "HistGradientBoostingClassifier": "sklearn.ensemble",
    "KNeighborsClassifier": "sklearn.neighbors",
    "SVC": "sklearn.svm",
    "LinearSVC": "sklearn.svm",
    "GaussianNB": "sklearn.naive_bayes",
}

REGRESSORS: dict[str, str] = {
    "LinearRegression": "sklearn.linear_model",
    "Ridge": "sklearn.linear_model",
    "Lasso": "sklearn.linear_model",
    "ElasticNet": "sklearn.linear_model",
    "SGDRegressor": "sklearn.linear_model",
    "DecisionTreeRegressor": "sklearn.tree",
    "RandomForestRegressor": "sklearn.ensemble",
    "ExtraTreesRegressor": "sklearn.ensemble",
    "GradientBoostingRegressor": "sklearn.ensemble",
    "HistGradientBoostingRegressor": "sklearn.ensemble",
    "KNeighborsRegressor": "sklearn.neighbors",
    "SVR": "sklearn.svm",
}

ESTIMATORS: dict[str, str] = {**CLASSIFIERS, **REGRESSORS}

# Metric name -> (scikit-learn scoring name for the search, task, higher is better)
METRICS: dict[str, tuple[str, str, bool]] = {
    "accuracy": ("accuracy", "classification", True),
    "balanced_accuracy": ("balanced_accuracy", "classification", True),
    "f1": ("f1", "classification", True),
    "precision": ("precision", "classification", True),
    "recall": ("recall", "classification", True),
    "auc": ("roc_auc", "classification", True),
    "log_loss": ("neg_log_loss", "classification", False),
    "r2": ("r2", "regression", True),
    "mae": ("neg_mean_absolute_error", "regression", False),
    "rmse": ("neg_root_mean_squared_error", "regression", False),
}

Scalar = int | float | str | bool | None


def plain(value: Any, where: str) -> None:
    """Parameters are plain data: scalars and lists of them (a mapping could only smuggle structure)."""
    if isinstance(value, list):
        for item in value:
            plain(item, where)
    elif not isinstance(value, int | float | str | bool) and value is not None:
        raise ValueError(f"{where}: {value!r} is not a plain value (number, string, boolean, null or a list)")


def _class(table: dict[str, str], name: str, what: str) -> type[Any]:
    module = table.get(name)
    if module is None:
        raise ValueError(
            f"{name!r} is not an allowed {what}; allowed: {', '.join(sorted(table))} (a pipeline file names"
            " classes from this list, never an import path)"
        )
    cls: type[Any] = getattr(importlib.import_module(module), name)
    return cls


def build(table: dict[str, str], name: str, params: dict[str, Any], what: str) -> Any:
    """An instance of an allowed class, with its parameters checked by scikit-learn (ValueError if bad)."""
    cls = _class(table, name, what)
    for key, value in params.items():
        plain(value, f"{name}.{key}")
    try:
        instance = cls(**params)
    except TypeError as exc:
        known = ", ".join(sorted(cls().get_params()))
        raise ValueError(f"{name}: {exc} (its parameters: {known})") from None
    check = getattr(instance, "_validate_params", None)
    if callable(check):
        try:
            check()
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{name}: {exc}") from None
    return instance


def estimator_task(name: str) -> str:
    return "classification" if name in CLASSIFIERS else "regression"
