"""Classic ML models on the gateway: specs, safe loading, data-quality checks, predict, monitoring.

`register(model, name, schema, reference)` writes a model as a governed artifact (see register.py).
Heavy libraries (scikit-learn, pandas, scipy, shap) load only when used.
"""

from __future__ import annotations

from typing import Any


def register(*args: Any, **kwargs: Any) -> Any:
    from gateway.ml.register import register as _register

    return _register(*args, **kwargs)


__all__ = ["register"]
