"""Typed specs of the governed artifacts. Each file a user writes parses into one of these.

Routers (`config/routers/<name>.yaml`) are defined here; other kinds add their spec classes beside.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

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
    headers: dict[str, str] = Field(
        default_factory=dict, description="Header names the operator allows (egress.deployment_headers)."
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Request parameters added to every call (OpenAI's, or ones the operator allows in"
        " egress.request_params, e.g. top_k); never hosts, credentials, headers, providers or regions.",
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

    def reaches_network(self, plugin_providers: frozenset[str]) -> bool:
        """Served by a built-in adapter that calls out (not the embedded local provider, not a plugin)."""
        if self.adapter == "local" or (self.adapter == "auto" and self.provider == "local"):
            return False
        return not (self.adapter == "auto" and self.provider in plugin_providers)


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


# -- prompts -------------------------------------------------------------------------------------------


class PromptMessage(StrictModel):
    """One message template: Jinja2 (sandboxed, strict undefined), inline or in a file beside the prompt."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | None = None
    file: str | None = Field(None, description="Template file, relative to the prompts/ directory.")

    @field_validator("content")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value is not None:
            check_template(value)
        return value

    @model_validator(mode="after")
    def _one_source(self) -> PromptMessage:
        if (self.content is None) == (self.file is None):
            raise ValueError("give exactly one of content (an inline template) or file (a template file)")
        if self.file is not None and (self.file.startswith("/") or ".." in self.file.split("/")):
            raise ValueError("file must be a relative path inside the prompts/ directory")
        return self


class PromptParams(StrictModel):
    """Model parameters sent with the prompt; the caller's own values win over these."""

    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    extra_body: dict[str, Any] = Field(
        default_factory=dict,
        description="More request parameters: OpenAI's, or provider-specific ones the operator allows in"
        " egress.request_params (e.g. top_k). Never hosts, credentials, headers, providers or regions.",
    )

    @model_validator(mode="after")
    def _extra_body_allowed(self, info: ValidationInfo) -> PromptParams:
        """A file being loaded: extra_body holds only allowed request parameters (stored versions are
        checked on the request path)."""
        from gateway.egress import egress_in, raise_problems

        egress = egress_in(info)
        if egress is not None:
            problems = egress.params.problems(self.extra_body, "chat")
            raise_problems("PromptParams", [(("extra_body", *p.loc), p.reason) for p in problems])
        return self


class RetrievalSpec(StrictModel):
    index: str = Field(description="An index name, optionally with @alias or @version (default: production).")
    top_k: int = Field(4, ge=1, le=100)
    min_score: float | None = None
    mode: Literal["dense", "lexical", "hybrid"] | None = None
    query: str | None = Field(
        None, description="A template for the search query; default: the last user message."
    )

    @field_validator("query")
    @classmethod
    def _query_template(cls, value: str | None) -> str | None:
        if value is not None:
            check_template(value)
        return value


class OnlineEvalSpec(StrictModel):
    sample_rate: float = Field(ge=0, le=1)
    metrics: list[str] = Field(min_length=1)
    judge: str | None = Field(None, description="A chat router served by opsgate that judges LLM metrics.")
    thresholds: dict[str, float] = Field(default_factory=dict)
    window: int = Field(100, ge=1)

    @model_validator(mode="after")
    def _usable_online(self) -> OnlineEvalSpec:
        """Live traffic has no reference answers: only reference-free metrics; judged ones need a judge."""
        from gateway.evaluation.metrics import registry

        for name in self.metrics:
            definition = registry().find(name)
            if not definition.reference_free:
                raise ValueError(f"metric {name!r} needs reference answers, which live traffic does not have")
            if definition.needs_judge and not self.judge:
                raise ValueError(f"metric {name!r} is judged by an LLM: set judge to a chat router")
        unknown = sorted(set(self.thresholds) - set(self.metrics))
        if unknown:
            raise ValueError(f"thresholds name metrics that are not measured: {', '.join(unknown)}")
        return self


class PromptSpec(StrictModel):
    """`prompts/<name>.yaml`."""

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    owner: str | None = None
    tags: list[str] = Field(default_factory=list)
    router: str = Field("default", description="router name, optionally @alias or @version")
    params: PromptParams = PromptParams()
    variables: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    messages: list[PromptMessage] = Field(min_length=1)
    retrieval: RetrievalSpec | None = None
    response_format: dict[str, Any] | None = None
    online_eval: OnlineEvalSpec | None = None

    @field_validator("variables")
    @classmethod
    def _json_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        from jsonschema import Draft202012Validator, SchemaError

        try:
            Draft202012Validator.check_schema(value)
        except SchemaError as exc:
            raise ValueError(f"not a valid JSON Schema: {exc.message}") from exc
        return value

    def referenced_files(self) -> list[str]:
        return [m.file for m in self.messages if m.file]


def check_template(source: str) -> None:
    """Fail at load time on Jinja2 syntax errors, with the template's own line number."""
    from jinja2 import TemplateSyntaxError

    from gateway.registry.render import environment

    try:
        environment().parse(source)
    except TemplateSyntaxError as exc:
        raise ValueError(f"template syntax error on template line {exc.lineno}: {exc.message}") from exc
