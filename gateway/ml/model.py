"""A loaded model version: rows in, predictions out. Built once per version and cached by the service.

Rows that passed the data checks become the model's input: a float matrix in feature order when every
feature is numeric (the fast path: no DataFrame per request), else a DataFrame with the schema's dtypes.
Classifiers with predict_proba are called once; the label is the most probable class.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.ml.errors import ModelUnavailable
from gateway.ml.schema import RowValidator
from gateway.ml.spec import NUMERIC, ModelSpec

# Models fitted on a DataFrame warn when scored from a matrix; the matrix is built in their column order.
warnings.filterwarnings("ignore", message="X does not have valid feature names", category=UserWarning)


@dataclass
class Outputs:
    labels: list[Any] | None = None  # classification
    probabilities: list[list[float]] | None = None
    scores: list[float] | None = None  # probability of the positive class (binary), for AUC
    values: list[float] | None = None  # regression

    def __len__(self) -> int:
        return len(self.labels if self.labels is not None else self.values or [])

    def row(self, i: int, classes: list[Any] | None) -> dict[str, Any]:
        if self.labels is None:
            return {"value": self.values[i] if self.values is not None else None}
        out: dict[str, Any] = {"label": self.labels[i]}
        if self.probabilities is not None and classes is not None:
            out["probabilities"] = {str(c): p for c, p in zip(classes, self.probabilities[i], strict=True)}
        return out

    def plain(self) -> list[Any]:
        """What MLflow's sklearn flavour returns: predict()'s output."""
        return list(self.labels if self.labels is not None else self.values or [])


def _py(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


@dataclass
class ServedModel:
    ref: str  # model:name@version#hash12
    name: str
    version: int
    content_hash: str
    spec: ModelSpec
    estimator: Any
    files: dict[str, bytes]
    order: list[str] = field(default_factory=list)
    classes: list[Any] | None = None
    positive: int | None = None  # index of the positive class in `classes`
    numeric: bool = True
    validator: RowValidator | None = None
    unsafe: bool = False  # loading ran code of the file's (operator-trusted, approved): kept while approved
    _reference: Any = None
    _reference_outputs: Outputs | None = None

    @classmethod
    def build(
        cls,
        ref: str,
        record_name: str,
        version: int,
        content_hash: str,
        spec: ModelSpec,
        estimator: Any,
        files: dict[str, bytes],
        *,
        unsafe: bool = False,
    ) -> ServedModel:
        served = cls(ref, record_name, version, content_hash, spec, estimator, files, unsafe=unsafe)
        served.order = served._feature_order()
        served.numeric = all(spec.inputs[f].type in NUMERIC for f in served.order)
        served.validator = RowValidator(spec)
        if spec.task == "classification":
            found = getattr(estimator, "classes_", None)
            if found is None:
                raise ModelUnavailable(f"{ref}: task is classification but the model has no classes_")
            served.classes = [_py(c) for c in found]
            if spec.output.labels is not None and [str(c) for c in spec.output.labels] != [
                str(c) for c in served.classes
            ]:
                raise ModelUnavailable(
                    f"{ref}: output.labels {spec.output.labels} differ from the model's classes {served.classes}"
                )
            positive = spec.output.positive
            if positive is None and spec.fairness is not None:
                positive = spec.fairness.favourable
            names = [str(c) for c in served.classes]
            served.positive = (
                names.index(str(positive))
                if positive is not None and str(positive) in names
                else (len(names) - 1)
            )
        return served

    def _feature_order(self) -> list[str]:
        fitted = getattr(self.estimator, "feature_names_in_", None)
        features = self.spec.feature_names
        if fitted is not None:
            fitted = [str(c) for c in fitted]
            if sorted(fitted) != sorted(features):
                raise ModelUnavailable(
                    f"{self.ref}: the model was fitted on columns {fitted}, but the spec's feature inputs are"
                    f" {features}; make the inputs match the model"
                )
            return fitted
        if self.spec.feature_order is not None:
            return list(self.spec.feature_order)
        if len(features) == 1:
            return features
        raise ModelUnavailable(
            f"{self.ref}: the model was fitted without column names; list the column order in feature_order"
        )

    # -- scoring -------------------------------------------------------------------------------------

    def matrix(self, rows: list[dict[str, Any]]) -> Any:
        order = self.order
        if self.numeric:
            nan = math.nan
            return np.array(
                [[nan if (v := row.get(f)) is None else v for f in order] for row in rows], dtype=np.float64
            )
        import pandas as pd

        frame = pd.DataFrame.from_records([[row.get(f) for f in order] for row in rows], columns=order)
        for name in order:
            kind = self.spec.inputs[name].type
            if kind == "number":
                frame[name] = frame[name].astype("float64")
        return frame

    def predict(self, rows: list[dict[str, Any]]) -> Outputs:
        return self.predict_matrix(self.matrix(rows))

    def predict_matrix(self, x: Any) -> Outputs:
        # Rows passed the data-quality checks already: skip scikit-learn's parameter validation, and its
        # finiteness scan when the matrix is known finite (nullable fields may still bring NaN: then the
        # estimator checks as usual and refuses what it cannot score).
        import sklearn  # here, not at module level: a gateway with no classic model never loads it (~170 MB)

        finite = isinstance(x, np.ndarray) and bool(np.isfinite(x).all())
        with sklearn.config_context(assume_finite=finite, skip_parameter_validation=True):
            return self._predict_matrix(x)

    def _predict_matrix(self, x: Any) -> Outputs:
        est = self.estimator
        if self.classes is None:
            return Outputs(values=[float(v) for v in np.asarray(est.predict(x)).ravel()])
        if self.spec.output.probabilities and hasattr(est, "predict_proba"):
            proba = np.asarray(est.predict_proba(x), dtype=np.float64)
            best = proba.argmax(axis=1)
            classes = self.classes
            labels = [classes[i] for i in best.tolist()]
            scores = proba[:, self.positive].tolist() if self.positive is not None else None
            return Outputs(labels=labels, probabilities=proba.tolist(), scores=scores)
        return Outputs(labels=[_py(v) for v in np.asarray(est.predict(x)).tolist()])

    # -- reference data (monitoring, explanations) ---------------------------------------------------

    def reference(self) -> Any:
        if self._reference is None and self.spec.reference is not None:
            from gateway.ml.artifacts import read_reference

            self._reference = read_reference(self.spec, self.files)
        return self._reference

    def reference_outputs(self) -> Outputs | None:
        """The model's predictions on the reference rows (the baseline for prediction drift)."""
        ref = self.reference()
        if ref is None:
            return None
        if self._reference_outputs is None:
            rows = reference_rows(ref, self.spec)
            self._reference_outputs = self.predict(rows)
        return self._reference_outputs


def reference_rows(frame: Any, spec: ModelSpec) -> list[dict[str, Any]]:
    """Reference DataFrame -> rows of the schema's columns, as JSON-like Python values."""
    cols = [c for c in spec.inputs if c in frame.columns]
    records: list[dict[str, Any]] = (
        frame[cols].astype(object).where(frame[cols].notna(), None).to_dict("records")
    )
    for row in records:
        for c, v in row.items():
            row[c] = _py(v)
    return records
