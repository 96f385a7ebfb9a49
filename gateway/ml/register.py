"""`gateway.ml.register(model, name, schema, reference)`: write a model as a governed artifact.

Writes `config/models/<name>.skops` (skops, the safe format), `<name>.reference.csv` (the drift and
explanation baseline) and `<name>.yaml` (the spec), then `git commit` + `opsgate sync` registers the
version like any other artifact (content hash over spec + model bytes + reference bytes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gateway.ml.spec import ModelSpec
from gateway.registry.hashing import canonical_data

MODELS_DIR = "config/models"


def infer_schema(frame: Any) -> dict[str, dict[str, Any]]:
    """Input fields from a DataFrame's dtypes (no ranges: add min/max/categories where you know them)."""
    out: dict[str, dict[str, Any]] = {}
    for col in frame.columns:
        kind = frame[col].dtype.kind
        field: dict[str, Any] = {
            "type": {"b": "boolean", "i": "integer", "u": "integer", "f": "number"}.get(kind, "string")
        }
        if frame[col].isna().any():
            field["nullable"] = True
        out[str(col)] = field
    return out


def register(
    model: Any,
    name: str,
    schema: dict[str, Any] | None = None,
    reference: Any = None,
    *,
    project_dir: str | Path = ".",
    target: str | None = None,
    description: str = "",
    **spec: Any,
) -> Path:
    """Write the model, its reference data and its spec; returns the spec's path.

    `schema` maps column -> field rules (`{"age": {"type": "integer", "min": 0}}`); when None it is
    inferred from `reference` (a DataFrame; a `target` column in it is kept as the label, not an input).
    Other keyword arguments are spec sections (fairness=..., accuracy=..., retrain=..., drift=...).
    """
    import skops.io as sio
    from sklearn.base import is_classifier

    folder = Path(project_dir) / MODELS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    inputs_frame = reference.drop(columns=[target]) if reference is not None and target else reference
    if schema is None:
        if inputs_frame is None:
            raise ValueError("give a schema, or a reference DataFrame to infer it from")
        schema = infer_schema(inputs_frame)
    data: dict[str, Any] = {"name": name}
    if description:
        data["description"] = description
    data["task"] = "classification" if is_classifier(model) else "regression"
    data["model"] = {"file": f"{name}.skops"}
    data["inputs"] = schema
    features = [c for c, f in schema.items() if f.get("feature", True)]
    if getattr(model, "feature_names_in_", None) is None and len(features) > 1:
        data["feature_order"] = features
    if data["task"] == "classification":
        data["output"] = {"labels": [c.item() if hasattr(c, "item") else c for c in model.classes_]}
    if reference is not None:
        data["reference"] = {"file": f"{name}.reference.csv", **({"target": target} if target else {})}
    data.update(spec)
    parsed = ModelSpec.model_validate(data)  # fail here, not at sync time
    sio.dump(model, folder / f"{name}.skops")
    if reference is not None:
        reference.to_csv(folder / f"{name}.reference.csv", index=False)
    path = folder / f"{name}.yaml"
    text = yaml.safe_dump(canonical_data(parsed), sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path
