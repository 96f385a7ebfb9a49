"""`config/routers/<name>.yaml`: the public model name, its strategy and the deployments behind it."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, model_validator

from gateway.providers.deployment import Deployment
from gateway.yamlspec import NAME_PATTERN, StrictModel


class FallbackStrategy(StrictModel):
    """Try deployments in the order written; move on when one fails."""

    # No default on a discriminator: specs are stored and hashed without defaults, and a stored
    # `strategy: {}` could not be loaded back (nor told apart from another strategy's `{}`).
    type: Literal["fallback"]


class WeightedStrategy(StrictModel):
    """Pick a deployment by weight; on failure, fall back to the others by descending weight."""

    type: Literal["weighted"]


Strategy = Annotated[FallbackStrategy | WeightedStrategy, Field(discriminator="type")]


class RouterSpec(StrictModel):
    """`config/routers/<name>.yaml`: the public model name and the deployments behind it."""

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    kind: Literal["chat", "embedding"] = "chat"
    strategy: Strategy = FallbackStrategy(type="fallback")
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

    @model_validator(mode="after")
    def _egress_allowed(self, info: ValidationInfo) -> RouterSpec:
        """A file being loaded (sync, start-up) names only hosts, variables, headers and parameters the
        operator allows. A stored version is not re-checked here: the adapters check it at call time."""
        from gateway.egress import egress_in, raise_problems

        egress = egress_in(info)
        if egress is None:
            return self
        plugins = _plugin_providers()
        problems = [
            (("deployments", i, *loc), message)
            for i, dep in enumerate(self.deployments)
            if dep.reaches_network(plugins)
            for loc, message in egress.deployment_problems(dep, self.kind)
        ]
        raise_problems("RouterSpec", problems)
        return self


def _plugin_providers() -> frozenset[str]:
    """Adapters installed as plugins (named after their provider): they, not opsgate, decide where to go."""
    from importlib.metadata import entry_points

    from gateway import extensions

    builtins = extensions.BUILTINS.get(extensions.ADAPTERS, {})
    return frozenset(ep.name for ep in entry_points(group=extensions.ADAPTERS) if ep.name not in builtins)
