"""Wire shapes of the OpenAI-compatible API (requests). Unknown fields pass through to the upstream."""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.errors import InvalidFields

M = TypeVar("M", bound=BaseModel)

# Fields that address the gateway itself; never sent upstream.
GATEWAY_FIELDS = frozenset({"prompt_variables", "prompt_id", "prompt_version", "opsgate"})


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class StreamOptions(_Open):
    include_usage: bool = False


class ChatRequest(_Open):
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(default_factory=list)  # required unless a prompt supplies them
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1, le=128)
    prompt_variables: dict[str, Any] | None = None
    prompt_id: str | None = None
    prompt_version: int | str | None = None


class EmbeddingRequest(_Open):
    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(None, ge=1)


def validate(model: type[M], data: Any) -> M:
    """Validate a parsed body; the first problem becomes a 422 naming the field."""
    if not isinstance(data, dict):
        raise InvalidFields("the request body must be a JSON object", code="invalid_body")
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
        raise InvalidFields(f"{param}: {msg}" if param else msg, param=param) from exc


def _is_union_branch(part: str) -> bool:
    """A union branch tag in an error location (`str`, `list[str]`), not a field (`stream`, `strict`)."""
    return part in ("str", "int", "float", "bool") or part.startswith(("function-", "list[", "dict["))


def upstream_body(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in GATEWAY_FIELDS}
