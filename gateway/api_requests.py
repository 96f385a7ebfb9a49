"""Wire shapes of the OpenAI-compatible API (requests).

A request is parsed once into its typed model, which keeps the body it came from: the flow reads the
typed fields (opsgate's own options too, under `opsgate`), and only `forward()` hands the body on,
without the fields that address the gateway itself. What may be forwarded at all is an allow-list of
OpenAI's parameters (gateway/providers/params.py), checked before any work is done for the request.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from gateway.errors import InvalidParameter

M = TypeVar("M", bound=BaseModel)
R = TypeVar("R", bound="_Request")

# Fields that address the gateway itself; never sent upstream.
GATEWAY_FIELDS = frozenset({"prompt_variables", "prompt_id", "prompt_version", "opsgate"})


# The integers a body may hold: what a 64-bit column or an upstream's JSON parser takes (orjson reads a
# larger JSON integer as a float, which the strict integer check then refuses, naming the field).
_INT_RANGE = 2**63


def _whole_float(value: Any) -> bool:
    return isinstance(value, float) and value.is_integer()


def _whole_numbers(value: Any) -> Any:
    """JSON has one number type: `13.0` is the integer 13 (JSON Schema says so, and clients that compute a
    count in floating point send it). Anything else (1e20 included) is left for the strict integer check to
    refuse."""
    if isinstance(value, float) and value.is_integer() and -_INT_RANGE <= value < _INT_RANGE:
        return int(value)
    if isinstance(value, list) and any(isinstance(v, float | list) for v in value):
        return [_whole_numbers(v) for v in value]
    return value


def _mentions(annotation: Any, kind: type) -> bool:
    return annotation is kind or any(_mentions(arg, kind) for arg in get_args(annotation))


_INT_FIELDS: dict[type[BaseModel], frozenset[str]] = {}


def _int_fields(model: type[BaseModel]) -> frozenset[str]:
    """The fields of `model` whose type admits an integer (worked out once per class: it runs per request)."""
    found = _INT_FIELDS.get(model)
    if found is None:
        fields = model.model_fields
        found = _INT_FIELDS[model] = frozenset(k for k, f in fields.items() if _mentions(f.annotation, int))
    return found


class StrictBody(BaseModel):
    """A JSON request body checked strictly: a value of the wrong type is refused, never coerced (`"1"` is
    not 1, `0` is not false, `"yes"` is not true), except that a whole number written `13.0` is an integer,
    as JSON Schema has it (the published schema says `integer`)."""

    model_config = ConfigDict(strict=True)

    @model_validator(mode="before")
    @classmethod
    def _integer_fields(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        whole: dict[str, Any] | None = None
        for k in _int_fields(cls):
            v = data.get(k)
            if isinstance(v, float | list):
                converted = _whole_numbers(v)
                if converted is not v:
                    whole = whole if whole is not None else dict(data)
                    whole[k] = converted
        return data if whole is None else whole


class _Open(StrictBody):
    """Open to fields OpenAI may add (checked by the allow-list of gateway/providers/params.py instead), and
    strict: a JSON value of the wrong type is refused, never coerced (`"temperature": "1"` used to be accepted
    and forwarded as a string)."""

    model_config = ConfigDict(extra="allow")


class _Request(_Open):
    """A request body: typed fields, plus the body as sent (for forwarding only)."""

    _body: dict[str, Any] = PrivateAttr(default_factory=dict)

    @classmethod
    def parse(cls: type[R], data: Any) -> R:
        request = validate(cls, data)
        request._body = data
        return request

    def forward(self) -> dict[str, Any]:
        """The body for the upstream: as sent, less the fields that address the gateway."""
        return upstream_body(self.body)

    @property
    def body(self) -> dict[str, Any]:
        # read from the private store directly: `self._body` goes through BaseModel.__getattr__ (per request)
        return self.__pydantic_private__["_body"]  # type: ignore[index,no-any-return]


class OpsgateOptions(BaseModel):
    """`opsgate`: options for the gateway itself (never sent upstream)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    include_context: bool = Field(False, description="RAG answers: put each cited chunk's text in citations.")


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class StreamOptions(_Open):
    # other keys are refused by the allow-list (400 forbidden_parameter / unknown_parameter)
    model_config = ConfigDict(json_schema_extra={"additionalProperties": False})

    include_usage: bool = False
    include_obfuscation: bool | None = None


# Fields whose nested rules are the allow-list's (gateway/providers/params.py: 400 `invalid_parameter` or
# `forbidden_parameter`): typed loosely here so that check keeps its answer, documented with its rules.
_METADATA_SCHEMA = {
    "anyOf": [
        {
            "type": "object",
            "maxProperties": 16,
            "propertyNames": {"maxLength": 64},
            "additionalProperties": {"type": "string", "maxLength": 512},
        },
        {"type": "null"},
    ],
    "description": "OpenAI's metadata: at most 16 string pairs (keys <= 64, values <= 512 characters).",
}
_FUNCTION_SCHEMA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string"},
        "description": {"type": "string"},
        "parameters": {"type": "object"},
        "strict": {"anyOf": [{"type": "boolean"}, {"type": "null"}]},
    },
    "additionalProperties": False,
}
_TOOLS_SCHEMA = {
    "anyOf": [
        {
            "type": "array",
            "items": {
                "oneOf": [
                    {
                        "type": "object",
                        "required": ["type", "function"],
                        "properties": {"type": {"const": "function"}, "function": _FUNCTION_SCHEMA},
                        "additionalProperties": False,
                    },
                    {
                        "type": "object",
                        "required": ["type", "custom"],
                        "properties": {
                            "type": {"const": "custom"},
                            "custom": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "description": {"type": "string"},
                                    "format": {"type": "object"},
                                },
                                "additionalProperties": False,
                            },
                        },
                        "additionalProperties": False,
                    },
                ]
            },
        },
        {"type": "null"},
    ],
    "description": "Function (or custom) tools only: other tool types would make a provider reach a server.",
}
_FUNCTIONS_SCHEMA = {
    "anyOf": [
        {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "description": {"type": "string"},
                    "parameters": {"type": "object"},
                },
                "additionalProperties": False,
            },
        },
        {"type": "null"},
    ],
    "description": "Deprecated by OpenAI in favour of `tools`.",
}
# gateway/registry/refs.py's grammar, as the request path applies it (surrounding blanks are ignored)
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
SELECTOR_PATTERN = r"^[A-Za-z0-9._-]+$"
PROMPT_REF_PATTERN = rf"^\s*(prompt:)?{NAME_PATTERN}(@[A-Za-z0-9._-]+)?\s*$"
Penalty = Annotated[float | None, Field(ge=-2, le=2)]


class ChatRequest(_Request):
    """OpenAI's chat completions request (platform.openai.com/docs/api-reference/chat/create), plus the
    gateway's own fields (`prompt_id`, `prompt_version`, `prompt_variables`, `opsgate`). `model` names a
    router or a prompt; `messages` may be left out when the prompt supplies them. Any other top-level field
    is refused (400) unless the operator allows it in `egress.request_params` (the published schema lists
    those too)."""

    model_config = ConfigDict(json_schema_extra={"additionalProperties": False})

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(default_factory=list)  # required unless a prompt supplies them
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1, le=128)
    frequency_penalty: Penalty = None
    presence_penalty: Penalty = None
    seed: int | None = None
    stop: str | list[str] | None = None
    user: str | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    logit_bias: dict[str, float] | None = None
    parallel_tool_calls: bool | None = None
    store: bool | None = None  # keep the call in the traffic store (GET /v1/chat/completions/{id})
    tool_choice: str | dict[str, Any] | None = None
    function_call: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    modalities: list[str] | None = None
    reasoning_effort: str | None = None
    service_tier: str | None = None
    verbosity: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    safety_identifier: str | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None
    metadata: Annotated[Any, WithJsonSchema(_METADATA_SCHEMA)] = None
    tools: Annotated[Any, WithJsonSchema(_TOOLS_SCHEMA)] = None
    functions: Annotated[Any, WithJsonSchema(_FUNCTIONS_SCHEMA)] = None
    prompt_variables: dict[str, Any] | None = None
    # parsed as artifact references (400 invalid_reference otherwise): the pattern documents the grammar
    prompt_id: str | None = Field(None, json_schema_extra={"pattern": PROMPT_REF_PATTERN})
    prompt_version: int | str | None = Field(None, json_schema_extra={"pattern": SELECTOR_PATTERN})
    opsgate: OpsgateOptions | None = None

    @property
    def include_context(self) -> bool:
        return self.opsgate is not None and self.opsgate.include_context

    @property
    def end_user(self) -> str | None:
        """OpenAI's `user` field (the application's end-user id), if a short string: a rollout's
        sticky assignment key."""
        user = self.body.get("user")
        return user if isinstance(user, str) and 0 < len(user) <= 200 else None

    def caller_messages(self) -> list[Any]:
        """The caller's messages as sent (dicts), for rendering after a prompt's own."""
        messages = self.body.get("messages")
        return list(messages) if isinstance(messages, list) else []


class EmbeddingRequest(_Request):
    """OpenAI's embeddings request (platform.openai.com/docs/api-reference/embeddings/create). Other
    top-level fields are refused (400) unless the operator allows them in `egress.request_params`."""

    model_config = ConfigDict(json_schema_extra={"additionalProperties": False})

    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None


def validate(model: type[M], data: Any) -> M:
    """Validate a parsed model-API body; the first problem is a 400 `invalid_request_error` naming the field
    in `param`, with OpenAI's code for what is wrong (`invalid_type`, `integer_below_min_value`, ...)."""
    if not isinstance(data, dict):
        raise InvalidParameter("the request body must be a JSON object", code="invalid_body")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        # unions report the branch tried ("messages.0.content.str"); keep the field path only
        loc = [str(p) for p in first["loc"] if not _is_union_branch(str(p))]
        param = ".".join(loc) or None
        msg = first["msg"]
        if first["type"] == "missing":
            msg = "this field is required"
        elif first["type"] == "extra_forbidden":
            msg = "unknown parameter for this API"
        elif first["type"] == "int_type" and _whole_float(first.get("input")):
            msg = f"must be an integer from -2^63 to 2^63-1, not {first['input']:g}"
        raise InvalidParameter(
            f"{param}: {msg}" if param else msg,
            param=param,
            code=error_code(first["type"], first.get("input"), decimal=_is_decimal(model, loc)),
        ) from exc


# pydantic's error types as OpenAI's error codes (what its API answers for the same mistake)
_BELOW = ("greater_than", "greater_than_equal")
_ABOVE = ("less_than", "less_than_equal")


def _is_decimal(model: type[BaseModel], loc: list[str]) -> bool:
    """Whether the field at `loc` (through nested models) is a number that may have a fraction."""
    annotation: Any = model
    for part in loc:
        fields = getattr(annotation, "model_fields", None)
        if fields is None:
            models = [a for a in get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
            fields = models[0].model_fields if models else None
        if fields is None or part not in fields:
            return False
        annotation = fields[part].annotation
    return _mentions(annotation, float)


def error_code(kind: str, value: Any = None, *, decimal: bool | None = None) -> str:
    """OpenAI's `code` for a pydantic error type (`decimal`: the field is a number, not an integer)."""
    if kind == "missing":
        return "missing_required_parameter"
    if kind == "extra_forbidden":
        return "unknown_parameter"
    if kind in _BELOW or kind in _ABOVE:
        number = "decimal" if (isinstance(value, float) if decimal is None else decimal) else "integer"
        return f"{number}_{'below_min' if kind in _BELOW else 'above_max'}_value"
    if kind == "too_short" and value == []:
        return "empty_array"
    if kind == "string_too_short" and value == "":
        return "empty_string"
    if kind.endswith(("_type", "_parsing")) or kind in ("model_attributes_type", "union_tag_invalid"):
        return "invalid_type"
    return "invalid_value"


def _is_union_branch(part: str) -> bool:
    """A union branch tag in an error location (`str`, `list[str]`), not a field (`stream`, `strict`)."""
    return part in ("str", "int", "float", "bool") or part.startswith(("function-", "list[", "dict["))


def upstream_body(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in GATEWAY_FIELDS}
