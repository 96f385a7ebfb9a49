"""Wire shapes of the OpenAI-compatible API (requests).

A request is parsed once into its typed model, which keeps the body it came from: the flow reads the
typed fields (opsgate's own options too, under `opsgate`), and only `forward()` hands the body on,
without the fields that address the gateway itself. What may be forwarded at all is an allow-list of
OpenAI's parameters (gateway/providers/params.py), checked before any work is done for the request.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from gateway.errors import InvalidFields

M = TypeVar("M", bound=BaseModel)
R = TypeVar("R", bound="_Request")

# Fields that address the gateway itself; never sent upstream.
GATEWAY_FIELDS = frozenset({"prompt_variables", "prompt_id", "prompt_version", "opsgate"})


class _Open(BaseModel):
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
        return upstream_body(self._body)

    @property
    def body(self) -> dict[str, Any]:
        return self._body


class OpsgateOptions(BaseModel):
    """`opsgate`: options for the gateway itself (never sent upstream)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    include_context: bool = Field(False, description="RAG answers: put each cited chunk's text in citations.")


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class StreamOptions(_Open):
    include_usage: bool = False


class ChatRequest(_Request):
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(default_factory=list)  # required unless a prompt supplies them
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1, le=128)
    store: bool | None = None  # keep the call in the traffic store (GET /v1/chat/completions/{id})
    prompt_variables: dict[str, Any] | None = None
    prompt_id: str | None = None
    prompt_version: int | str | None = None
    opsgate: OpsgateOptions | None = None

    @property
    def include_context(self) -> bool:
        return self.opsgate is not None and self.opsgate.include_context

    def caller_messages(self) -> list[Any]:
        """The caller's messages as sent (dicts), for rendering after a prompt's own."""
        messages = self._body.get("messages")
        return list(messages) if isinstance(messages, list) else []


class EmbeddingRequest(_Request):
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
