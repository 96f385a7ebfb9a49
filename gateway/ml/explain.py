"""Explanations with SHAP: per-prediction feature attributions (`explain: true`) and global importance.

shap's model-agnostic explainer on the model's own output function (the positive class's probability
for classifiers, the value for regressors), with a sample of the reference dataset as the background:
exact Shapley values for up to 10 features, the permutation approximation above. Attributions are per
input column, as the caller sent them, whatever the model does inside (one-hot encoding, scaling).

SHAP's maskers do arithmetic on the data, so string columns (most tabular models: a loan's purpose, a
census' occupation) cannot reach them as strings. Each column is encoded as a number for SHAP: numbers
stay numbers, strings (and nulls) become codes of a per-column table; the function SHAP calls decodes
the codes back into the values the model was trained on before scoring. Masking only ever swaps whole
values between the explained row and background rows, so every code SHAP passes back is one of the
table's, and the explanation is exactly that of the model on its real inputs (base value + attributions
= the model's output for the row).

Global importance of a version is the mean |SHAP value| per feature over reference rows, computed once
and cached. shap (and numba under it) takes seconds to import, so it is imported on first use, in a
worker thread.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np

from gateway.ml.errors import ModelUnavailable
from gateway.ml.model import ServedModel, reference_rows

log = logging.getLogger("opsgate.ml")
SEED = 0
_warmed = False
_warm_lock = threading.Lock()


def warmed() -> bool:
    return _warmed


def warm_up(served: ServedModel) -> None:
    """Once per process: explain one reference row, so shap's import and its numba JIT compilation
    (~5 s together) happen at start-up instead of in the first `explain: true` request. Never fails the
    caller: a model SHAP cannot explain is reported when it is asked to."""
    global _warmed
    with _warm_lock:
        if _warmed or served.spec.reference is None:
            return
        try:
            explainer = Explainer(served)
            explainer.explain_matrix(explainer.background(1))
        except Exception as exc:  # noqa: BLE001 - a warm-up only; the request path reports errors
            log.warning("explanation warm-up on %s skipped: %s: %s", served.ref, type(exc).__name__, exc)
            return
        _warmed = True


class Codes:
    """Rows <-> float matrices for SHAP: numbers as they are, every other value as a code per column."""

    def __init__(self, served: ServedModel) -> None:
        self.order = served.order
        self.kinds = [served.spec.inputs[name].type for name in self.order]
        self.coded = [j for j, kind in enumerate(self.kinds) if kind == "string"]
        self._values: dict[int, list[Any]] = {j: [] for j in self.coded}  # code -> value
        self._codes: dict[int, dict[Any, int]] = {j: {} for j in self.coded}  # value -> code
        self._lock = threading.Lock()

    def encode(self, rows: list[dict[str, Any]]) -> Any:
        out = np.empty((len(rows), len(self.order)), dtype=np.float64)
        with self._lock:
            for j, name in enumerate(self.order):
                column = [row.get(name) for row in rows]
                out[:, j] = self._code_column(j, column) if j in self._codes else _numbers(column)
        return out

    def _code_column(self, j: int, column: list[Any]) -> list[float]:
        codes, values = self._codes[j], self._values[j]
        out = []
        for value in column:
            code = codes.get(value)
            if code is None:
                code = codes[value] = len(values)
                values.append(value)
            out.append(float(code))
        return out

    def decode(self, x: Any) -> Any:
        """SHAP's masked matrix -> the DataFrame the model scores (the dtypes of ServedModel.matrix)."""
        import pandas as pd

        columns: dict[str, Any] = {}
        for j, name in enumerate(self.order):
            values = x[:, j]
            kind = self.kinds[j]
            if kind == "string":
                table = np.array(self._values[j], dtype=object)  # a copy: encode may append meanwhile
                columns[name] = table[values.astype(np.int64)]
            elif kind == "integer" and not np.isnan(values).any():
                columns[name] = values.astype(np.int64)
            elif kind == "boolean" and not np.isnan(values).any():
                columns[name] = values.astype(bool)
            else:
                columns[name] = values
        return pd.DataFrame(columns, columns=self.order)


def _numbers(column: list[Any]) -> Any:
    return np.array([np.nan if v is None else float(v) for v in column], dtype=np.float64)


class Explainer:
    def __init__(self, served: ServedModel) -> None:
        self.served = served
        self.codes = Codes(served)
        self._explainer: Any = None
        self._global: dict[str, Any] | None = None
        self._lock = threading.Lock()

    @property
    def output_name(self) -> str:
        s = self.served
        if s.classes is None:
            return "predicted value"
        return f"probability of class {s.classes[s.positive or 0]!r}"

    def _f(self, x: Any) -> Any:
        """The explained output on SHAP's (encoded, masked) rows."""
        served = self.served
        data = x if served.numeric else self.codes.decode(np.asarray(x, dtype=np.float64))
        if served.classes is None:
            return np.asarray(served.estimator.predict(data), dtype=float)
        return np.asarray(served.estimator.predict_proba(data), dtype=float)[:, served.positive or 0]

    def background(self, rows: int) -> Any:
        """Up to `rows` reference rows (a fixed sample), encoded."""
        ref = self.served.reference()
        if ref is None:
            raise ModelUnavailable(f"{self.served.ref}: explanations need a reference dataset in the spec")
        sample = ref.sample(n=min(rows, len(ref)), random_state=SEED) if len(ref) > rows else ref
        return self.codes.encode(reference_rows(sample, self.served.spec))

    def explainer(self) -> Any:
        with self._lock:
            if self._explainer is None:
                import shap

                masker = shap.maskers.Independent(self.background(self.served.spec.explain.background_rows))
                self._explainer = shap.Explainer(self._f, masker, feature_names=self.served.order, seed=SEED)
            return self._explainer

    def explain_matrix(self, x: Any) -> list[dict[str, Any]]:
        """Attributions for encoded rows (see `Codes`)."""
        result = self.explainer()(np.asarray(x, dtype=np.float64), silent=True)
        out = []
        for i in range(len(x)):
            values = np.asarray(result.values[i], dtype=float)
            base = float(np.asarray(result.base_values[i]).ravel()[0])
            out.append(
                {
                    "output": self.output_name,
                    "base_value": base,
                    "attributions": dict(zip(self.served.order, values.tolist(), strict=True)),
                }
            )
        return out

    def explain_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.explainer()  # the background's codes first: a fixed table whatever the requests bring
        return self.explain_matrix(self.codes.encode(rows))

    def global_importance(self) -> dict[str, Any]:
        if self._global is None:
            self.explainer()
            x = self.background(self.served.spec.explain.global_rows)
            explained = self.explain_matrix(x)
            names = self.served.order
            mean_abs = {n: float(np.mean([abs(e["attributions"][n]) for e in explained])) for n in names}
            ranked = dict(sorted(mean_abs.items(), key=lambda kv: -kv[1]))
            self._global = {
                "method": "mean |SHAP value| over reference rows",
                "output": self.output_name,
                "rows": len(explained),
                "importance": ranked,
            }
        return self._global
