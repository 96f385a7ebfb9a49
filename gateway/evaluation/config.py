"""The `evaluation:` section of config/gateway.yaml."""

from __future__ import annotations

from pydantic import Field

from gateway.yamlspec import ENV_NAME_PATTERN, StrictModel


class OnlineEvalConfig(StrictModel):
    enabled: bool = Field(True, description="Score the samples prompts ask for in their online_eval.")
    queue_size: int = Field(
        1000, gt=0, description="Sampled answers waiting for scoring; beyond it they drop."
    )
    workers: int = Field(1, ge=1, le=16, description="Concurrent scoring tasks.")
    batch_size: int = Field(500, gt=0, description="Scores written to the database in one transaction.")
    flush_interval_s: float = Field(1.0, gt=0, description="Longest a score waits to be written.")
    api_key_env: str | None = Field(
        None,
        pattern=ENV_NAME_PATTERN,
        description="Env var with the key the worker's judge calls use (default: the bootstrap admin key).",
    )


class EvaluationConfig(StrictModel):
    online: OnlineEvalConfig = OnlineEvalConfig()
