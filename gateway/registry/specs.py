"""Typed specs of the governed artifacts. Each file a user writes parses into one of these.

Routers (`config/routers/<name>.yaml`) are defined here; other kinds add their spec classes beside.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from gateway.yamlspec import StrictModel

NAME_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,127}$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


class Deployment(StrictModel):
    """One upstream a router may call: a litellm-style model string plus endpoint and credentials."""

    id: str = Field(pattern=NAME_PATTERN)
    model: str = Field(min_length=3, description='litellm-style "provider/model", e.g. openai/gpt-4o-mini')
    api_base: str | None = None
    api_key_env: str | None = Field(
        None, pattern=ENV_NAME_PATTERN, description="Name of the env var holding the key; never the key."
    )
    timeout_s: float = Field(30.0, gt=0, le=3600)
    retries: int | None = Field(None, ge=0, le=10, description="Overrides the router's retries.")
    weight: float = Field(1.0, gt=0, description="Share of traffic under the weighted strategy.")
    adapter: Literal["auto", "openai", "litellm", "local"] = "auto"
    headers: dict[str, str] = Field(default_factory=dict)
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra provider parameters passed to litellm (e.g. aws_region_name).",
    )
    input_cost_per_token: float | None = Field(None, ge=0)
    output_cost_per_token: float | None = Field(None, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _no_literal_secret(cls, data: Any) -> Any:
        if isinstance(data, dict) and "api_key" in data:
            raise ValueError(
                "api_key is not allowed: never write a secret in a config file; put it in an environment"
                " variable and name that variable in api_key_env"
            )
        return data

    @field_validator("model")
    @classmethod
    def _provider_prefix(cls, value: str) -> str:
        provider, sep, rest = value.partition("/")
        if not sep or not provider or not rest:
            raise ValueError('must be "provider/model", e.g. "openai/gpt-4o-mini" or "local/extractive"')
        return value

    @property
    def provider(self) -> str:
        return self.model.split("/", 1)[0]

    @property
    def model_name(self) -> str:
        return self.model.split("/", 1)[1]


class FallbackStrategy(StrictModel):
    """Try deployments in the order written; move on when one fails."""

    type: Literal["fallback"] = "fallback"


class WeightedStrategy(StrictModel):
    """Pick a deployment by weight; on failure, fall back to the others by descending weight."""

    type: Literal["weighted"] = "weighted"


Strategy = Annotated[FallbackStrategy | WeightedStrategy, Field(discriminator="type")]


class RouterSpec(StrictModel):
    """`config/routers/<name>.yaml`: the public model name and the deployments behind it."""

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    kind: Literal["chat", "embedding"] = "chat"
    strategy: Strategy = FallbackStrategy()
    deployments: list[Deployment] = Field(min_length=1)
    retries: int = Field(0, ge=0, le=10, description="Extra tries on the same deployment before moving on.")
    cooldown_s: float = Field(
        30.0, ge=0, description="After a failure a deployment is skipped this long while others remain."
    )
    allowed_fails: int = Field(1, ge=1, description="Failures in a row that put a deployment in cooldown.")

    @model_validator(mode="after")
    def _unique_ids(self) -> RouterSpec:
        seen: set[str] = set()
        for dep in self.deployments:
            if dep.id in seen:
                raise ValueError(f"deployment id {dep.id!r} is used twice; ids must be unique")
            seen.add(dep.id)
        return self
