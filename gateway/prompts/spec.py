"""`prompts/<name>.yaml`: messages (Jinja2 templates, inline or in files), variables, params, retrieval and
online evaluation of a prompt artifact."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from gateway.yamlspec import NAME_PATTERN, StrictModel


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
        """Thresholds name measured metrics. Whether the metrics exist and suit live traffic is checked by
        evaluation, through the prompt kind's `checks` (gateway/kinds.py)."""
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
    def _json_schema(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        from jsonschema import Draft202012Validator, SchemaError

        from gateway.egress import egress_in

        try:
            Draft202012Validator.check_schema(value)
        except SchemaError as exc:
            raise ValueError(f"not a valid JSON Schema: {exc.message}") from exc
        # a file being loaded (sync, start-up); a stored version is refused on the request path instead
        outside = outside_refs(value) if egress_in(info) is not None else []
        if outside:
            where, ref = outside[0]
            raise ValueError(
                f"{where}: {ref!r} points outside the schema; opsgate never fetches a schema (no host or file"
                " is read): put the definition under $defs and refer to it as '#/$defs/<name>'"
            )
        return value

    def referenced_files(self) -> list[str]:
        return [m.file for m in self.messages if m.file]


def outside_refs(schema: Any, where: str = "") -> list[tuple[str, str]]:
    """(location, reference) of every `$ref` / `$dynamicRef` that leaves the schema (a URL, a file, another
    document): only references within it (`#...`) resolve."""
    found: list[tuple[str, str]] = []
    if isinstance(schema, dict):
        for key, value in schema.items():
            here = f"{where}.{key}" if where else str(key)
            if key in ("$ref", "$dynamicRef") and isinstance(value, str) and not value.startswith("#"):
                found.append((here, value))
            else:
                found.extend(outside_refs(value, here))
    elif isinstance(schema, list):
        for i, item in enumerate(schema):
            found.extend(outside_refs(item, f"{where}.{i}" if where else str(i)))
    return found


def check_template(source: str) -> None:
    """Fail at load time on Jinja2 syntax errors, with the template's own line number."""
    from jinja2 import TemplateSyntaxError

    from gateway.prompts.render import environment

    try:
        environment().parse(source)
    except TemplateSyntaxError as exc:
        raise ValueError(f"template syntax error on template line {exc.lineno}: {exc.message}") from exc
