"""Provider adapters and the choice of adapter for a deployment."""

from __future__ import annotations

from typing import Any

from gateway import extensions
from gateway.egress.params import ParamRules
from gateway.errors import ConfigError
from gateway.providers.base import Adapter, AdapterServices
from gateway.providers.deployment import Deployment

# Providers whose API is OpenAI's own wire format: served by the direct pooled adapter.
DIRECT_PROVIDERS = frozenset(
    {"openai", "hosted_vllm", "openai_compatible", "custom_openai", "lm_studio", "llamafile", "xinference"}
)


class Adapters:
    """One instance of each adapter for the life of the app; picks the adapter for a deployment."""

    def __init__(self, services: AdapterServices) -> None:
        factories = extensions.load(extensions.ADAPTERS)
        self._by_name: dict[str, Adapter] = {name: f(services) for name, f in factories.items()}
        self.services = services

    @property
    def params(self) -> ParamRules:
        """The request-parameter allow-list (with the operator's additions), for checks early on the
        request path: `adapters.params.check_request(body, "chat")` refuses with a 400 naming the field."""
        return self.services.params

    def for_deployment(self, deployment: Deployment) -> Adapter:
        name: str = deployment.adapter
        if name == "auto":
            if deployment.provider in self._by_name:  # local, openai, or a plugin named after its provider
                name = deployment.provider
            elif deployment.provider in DIRECT_PROVIDERS:
                name = "openai"
            else:
                name = "litellm"
        adapter = self._by_name.get(name)
        if adapter is None:
            raise ConfigError(f"deployment {deployment.id!r}: no adapter named {name!r}")
        return adapter

    async def close(self) -> None:
        for adapter in self._by_name.values():
            await adapter.close()

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def get(self, name: str) -> Any:
        return self._by_name[name]
