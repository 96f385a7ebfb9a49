"""Explanations with SHAP: per-prediction feature attributions (`explain: true`) and global importance.

shap's model-agnostic explainer on the model's own output function (the positive class's probability
for classifiers, the value for regressors), with a sample of the reference dataset as the background:
exact Shapley values for up to 10 features, the permutation approximation above. Global importance of a
version is the mean |SHAP value| per feature over reference rows, computed once and cached.
shap (and numba under it) takes seconds to import, so it is imported on first use, in a worker thread.
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
            explainer.explain_matrix(explainer._background(1))
        except Exception as exc:  # noqa: BLE001 - a warm-up only; the request path reports errors
            log.info("explanation warm-up on %s skipped: %s", served.ref, exc)
            return
        _warmed = True


class Explainer:
    def __init__(self, served: ServedModel) -> None:
        self.served = served
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
        served = self.served
        if not served.numeric:
            import pandas as pd

            x = pd.DataFrame(x, columns=served.order)
            for name in served.order:
                if served.spec.inputs[name].type == "number":
                    x[name] = x[name].astype("float64")
        if served.classes is None:
            return np.asarray(served.estimator.predict(x), dtype=float)
        return np.asarray(served.estimator.predict_proba(x), dtype=float)[:, served.positive or 0]

    def _background(self, rows: int) -> Any:
        ref = self.served.reference()
        if ref is None:
            raise ModelUnavailable(f"{self.served.ref}: explanations need a reference dataset in the spec")
        sample = ref.sample(n=min(rows, len(ref)), random_state=SEED) if len(ref) > rows else ref
        return self.served.matrix(reference_rows(sample, self.served.spec))

    def explainer(self) -> Any:
        with self._lock:
            if self._explainer is None:
                import shap

                background = self._background(self.served.spec.explain.background_rows)
                masker = shap.maskers.Independent(
                    np.asarray(background, dtype=object if not self.served.numeric else float)
                )
                self._explainer = shap.Explainer(self._f, masker, feature_names=self.served.order, seed=SEED)
            return self._explainer

    def explain_matrix(self, x: Any) -> list[dict[str, Any]]:
        arr = np.asarray(x, dtype=float if self.served.numeric else object)
        result = self.explainer()(arr, silent=True)
        out = []
        for i in range(len(arr)):
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
        return self.explain_matrix(self.served.matrix(rows))

    def global_importance(self) -> dict[str, Any]:
        if self._global is None:
            x = self._background(self.served.spec.explain.global_rows)
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
