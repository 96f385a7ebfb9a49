"""Classic ML models on the gateway: specs, safe loading, data-quality checks, predict, monitoring.

`register(model, name, schema, reference)` writes a model as a governed artifact (see register.py).
Heavy libraries (scikit-learn, skops, pandas, scipy, shap) load only when used.
"""

from __future__ import annotations

# Bound eagerly: importing the submodule later must not shadow the function on the package.
from gateway.ml.register import register

__all__ = ["register"]
