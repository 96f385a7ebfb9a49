"""The `ml:` section of config/gateway.yaml."""

from __future__ import annotations

from pydantic import Field

from gateway.yamlspec import StrictModel


class MLConfig(StrictModel):
    monitor_interval_s: float = Field(
        60.0,
        ge=0,
        description="How often served versions are checked for drift, fairness, accuracy (0: never).",
    )
    queue_size: int = Field(10_000, gt=0, description="Prediction batches waiting to be written.")
    batch_size: int = Field(2000, gt=0, description="Rows written per transaction.")
    flush_interval_s: float = Field(0.2, gt=0)
    inline_rows: int = Field(
        256,
        ge=0,
        description="Batches up to this many rows are scored on the event loop; larger in a thread.",
    )
    preload: bool = Field(True, description="Load every version an alias points at when the catalog changes.")
    warm_explanations: bool = Field(
        True,
        description="At start-up, before /readyz says ready, explain one reference row once, so the first"
        " `explain: true` request does not wait ~5 s for SHAP's code to compile.",
    )
