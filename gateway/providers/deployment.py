"""A deployment: one upstream a router may call (the `deployments:` entries of a router file).

It lives with the adapters that call it; the router spec that lists deployments is in gateway/routing/spec.py.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from gateway.yamlspec import ENV_NAME_PATTERN, NAME_PATTERN, StrictModel


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
    adapter: str = Field(
        "auto",
        pattern=NAME_PATTERN,
        description="auto (by provider), a built-in adapter (openai, litellm, local) or an installed plugin"
        " adapter (entry point group opsgate.adapters).",
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="Header names the operator allows (egress.deployment_headers)."
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Request parameters added to every call (OpenAI's, or ones the operator allows in"
        " egress.request_params, e.g. top_k); never hosts, credentials, headers, providers or regions.",
    )
    responses: Literal["bridge", "native"] = Field(
        "bridge",
        description="How /v1/responses reaches it: bridge (as a chat completion, any upstream) or native (its"
        " own /responses endpoint, the answer passed through; openai adapter, non-streamed, no"
        " previous_response_id or conversation: those are bridged). params are then Responses parameters.",
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

    @field_validator("adapter")
    @classmethod
    def _known_adapter(cls, value: str) -> str:
        known = adapter_names()
        if value != "auto" and value not in known:
            raise ValueError(f"no adapter named {value!r}; adapters: auto, {', '.join(sorted(known))}")
        return value

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

    def reaches_network(self, plugin_providers: frozenset[str]) -> bool:
        """Served by a built-in adapter that calls out (not the embedded local provider, not a plugin)."""
        if self.adapter == "local" or (self.adapter == "auto" and self.provider == "local"):
            return False
        if self.adapter in plugin_providers:  # a plugin named in the file: it decides where to go
            return False
        return not (self.adapter == "auto" and self.provider in plugin_providers)


@functools.cache
def adapter_names() -> frozenset[str]:
    """Built-in adapters and installed plugin adapters, by name, without importing any of them."""
    from importlib.metadata import entry_points

    from gateway import extensions

    builtins = extensions.BUILTINS.get(extensions.ADAPTERS, {})
    return frozenset(builtins) | frozenset(ep.name for ep in entry_points(group=extensions.ADAPTERS))
