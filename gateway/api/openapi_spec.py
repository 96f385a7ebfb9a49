"""What `/openapi.json` publishes: each route documents itself in its decorator, this module supplies the
pieces and finishes the document.

A route declares, in `@router.post(...)` / `@router.get(...)`:
    responses=responses(OkModel, 400, 401, ...)  the success body and every error status it can answer,
                                                 all errors with the one shape `{"error": {"message",
                                                 "type", "param", "code"}}` (Retry-After on 429/503);
                                                 `error_responses(...)` gives the errors alone (to merge
                                                 with a success entry of several media types, or on a
                                                 whole APIRouter)
    openapi_extra=json_body(Model)               the request body, when the handler reads it itself (the
                                                 OpenAI routes parse bodies after authenticating, so
                                                 FastAPI never sees a body parameter); its schemas land
                                                 in components
    openapi_extra=body_properties(field=schema)  what a handler checks beyond a body model FastAPI parses

`install(app, ...)` replaces `app.openapi` with a builder that runs FastAPI's and then:
  - moves the schemas `json_body` carried (`x-opsgate-schemas`) into `components.schemas`;
  - marks every operation that can answer 401 as needing the bearer key (`security`), and adds the scheme;
  - replaces FastAPI's default 422 (`{"detail": [...]}`, never what opsgate answers) with the error shape;
  - lists the operator's extra request parameters (`egress.request_params`) in the OpenAI bodies, which are
    otherwise closed (`additionalProperties: false`: other fields are refused with a 400).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field

REF = "#/components/schemas/{model}"

# -- the error shape --------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    message: str = Field(description="What went wrong and what to do about it.")
    type: str = Field(description="invalid_request_error, authentication_error, permission_error, ...")
    param: str | None = Field(description="The request field at fault, when one is.")
    code: str | None = Field(description="A stable machine-readable code, e.g. model_not_found.")


class ErrorBody(BaseModel):
    """OpenAI's error JSON: every error opsgate answers has this shape (never FastAPI's `detail`)."""

    error: ErrorDetail


class AnthropicErrorDetail(BaseModel):
    type: str
    message: str


class AnthropicErrorBody(BaseModel):
    """Anthropic's error JSON, which the Messages surface (/v1/messages) answers."""

    type: Literal["error"]
    error: AnthropicErrorDetail


ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Bad request: invalid JSON, a parameter that may not be sent, or a request the gateway refuses.",
    401: "No API key, or a key the gateway does not know (send `Authorization: Bearer <key>`).",
    403: "The key may not do this (the message names the role or grant missing), or a policy refused it.",
    404: "Unknown model, artifact, version, alias, promotion or key.",
    405: "Method not allowed on this path (the `Allow` header lists the methods).",
    408: "The request body did not arrive within `server.body_timeout_s` (slow-loris bodies).",
    409: "The state changed under the request (e.g. a promotion already pending).",
    413: "The request body is larger than `server.max_body_bytes`.",
    422: "A field has the wrong type or value; `param` names it.",
    429: "A rate limit or budget was reached, by this key or by every upstream; retry after `Retry-After`.",
    500: "A bug in the gateway; the message quotes the request id.",
    502: "The upstream provider failed or answered something malformed.",
    503: "No deployment could be reached, or a part the request needs is unavailable; may say `Retry-After`.",
    504: "The upstream provider did not answer in time.",
}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}


def error_responses(*statuses: int, shape: type[BaseModel] = ErrorBody) -> dict[int | str, dict[str, Any]]:
    """The `responses=` entries for the error statuses a route can answer, each with the error shape
    (`shape=AnthropicErrorBody` for the Anthropic surface)."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"model": shape, "description": ERROR_DESCRIPTIONS[status]}
        if status in (429, 503):
            entry["headers"] = _RETRY_AFTER
        if status == 405:
            entry["headers"] = {
                "Allow": {"description": "The methods allowed.", "schema": {"type": "string"}}
            }
        out[status] = entry
    return out


# a model call (chat, embeddings, and the other OpenAI-/Anthropic-style surfaces): the caller's faults, the
# key's, the limits, the upstream's
CALL_ERRORS = (400, 401, 403, 404, 408, 413, 422, 429, 502, 503, 504)
# the admin API: its reads and writes (a database outage is a 503 with Retry-After)
ADMIN_ERRORS = (400, 401, 403, 404, 408, 409, 413, 422, 503)
# classic models: the caller's faults, the key's, and a model that cannot be loaded or explained (503)
ML_ERRORS = (400, 401, 403, 404, 408, 413, 422, 503)


def responses(ok: type[BaseModel] | None = None, *errors: int, status: int = 200) -> dict[int | str, Any]:
    """`responses=` for a route whose handler returns a Response itself: the success body and the errors."""
    out: dict[int | str, Any] = {}
    if ok is not None:
        out[status] = {"model": ok, "description": "Success."}
    out.update(error_responses(*errors))
    return out


# -- request bodies ---------------------------------------------------------------------------------------


def json_body(
    model: type[BaseModel] | None = None,
    *,
    schema: dict[str, Any] | None = None,
    others: dict[str, dict[str, Any]] | None = None,
    required: bool = True,
    description: str | None = None,
    also: Iterable[type[BaseModel]] = (),
) -> dict[str, Any]:
    """`openapi_extra=` documenting a JSON request body the handler reads itself: a pydantic model (its
    schema and those it refers to go into components) or a raw JSON schema; `others` adds other media
    types (e.g. `{"text/csv": {"schema": {"type": "string"}}}`); `also` carries more models into components
    (e.g. the chunk of an SSE stream, which a text/event-stream response can only name)."""
    carried: dict[str, Any] = dict(carry(*also)["x-opsgate-schemas"]) if also else {}
    if model is not None:
        full = model.model_json_schema(ref_template=REF)
        carried.update(full.pop("$defs", {}))
        carried[model.__name__] = full
        schema = {"$ref": REF.format(model=model.__name__)}
    content: dict[str, Any] = {"application/json": {"schema": schema or {}}}
    content.update(others or {})
    body: dict[str, Any] = {"required": required, "content": content}
    if description:
        body["description"] = description
    extra: dict[str, Any] = {"requestBody": body}
    if carried:
        extra["x-opsgate-schemas"] = carried
    return extra


def body_properties(**properties: dict[str, Any]) -> dict[str, Any]:
    """`openapi_extra=` adding constraints to properties of a body FastAPI documents from its pydantic
    model (a `$ref`; its siblings apply too in OpenAPI 3.1): what the handler checks beyond the model."""
    schema = {"properties": properties}
    return {"requestBody": {"content": {"application/json": {"schema": schema}}}}


# gateway/registry/refs.py's grammar (surrounding blanks are ignored; an unknown kind is a 400)
_KIND = "[a-z]+"
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
VERSION_REF = {"type": "string", "pattern": rf"^\s*{_KIND}:{_NAME}@[0-9]+\s*$"}
KIND_REF = {"type": "string", "pattern": rf"^\s*{_KIND}:{_NAME}(@[A-Za-z0-9._-]+)?\s*$"}


def carry(*models: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra=` putting models into components without using them as a body."""
    carried: dict[str, Any] = {}
    for model in models:
        full = model.model_json_schema(ref_template=REF, mode="serialization")
        carried.update(full.pop("$defs", {}))
        carried[model.__name__] = full
    return {"x-opsgate-schemas": carried}


# -- response shapes (documentation of what the handlers return; open to fields providers add) -------------


class _Shape(BaseModel):
    model_config = ConfigDict(extra="allow")


class Usage(_Shape):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(_Shape):
    role: str
    content: str | None = None


class ChatChoice(_Shape):
    index: int
    message: AssistantMessage
    finish_reason: str | None


class ChatCompletion(_Shape):
    """OpenAI's chat completion object."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None


class ChunkChoice(_Shape):
    index: int
    delta: dict[str, Any]
    finish_reason: str | None = None


class ChatCompletionChunk(_Shape):
    """One `data:` event of a chat completion stream (`stream: true`); the stream ends with `data: [DONE]`."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


SSE_CHUNKS = {
    "text/event-stream": {
        "schema": {
            "type": "string",
            "description": "Server-sent events when `stream: true`: each `data:` line holds a "
            "ChatCompletionChunk (#/components/schemas/ChatCompletionChunk), then `data: [DONE]`. A failure "
            "after the stream started is an `error` object in a data line (the error shape's `error`).",
        }
    }
}


def sse(description: str) -> dict[str, Any]:
    """The `text/event-stream` media type of a route that streams when asked (`stream: true`)."""
    return {"text/event-stream": {"schema": {"type": "string", "description": description}}}


def streamed(model: type[BaseModel], description: str) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a call that answers `model` as JSON, or streams (`stream: true`) as described."""
    return {
        200: {"model": model, "description": "The answer (JSON), or its stream.", "content": sse(description)}
    }


class TextChoice(_Shape):
    text: str
    index: int
    logprobs: None = None
    finish_reason: str | None


class TextCompletion(_Shape):
    """OpenAI's (legacy) completion object."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage | None = None


class ResponseUsage(_Shape):
    input_tokens: int
    output_tokens: int
    total_tokens: int


class ResponseObject(_Shape):
    """OpenAI's Responses API `response` object (output items: message, function_call, and whatever a
    natively served deployment adds, such as reasoning)."""

    id: str
    object: Literal["response"]
    created_at: int
    status: str
    model: str
    output: list[dict[str, Any]]
    error: dict[str, Any] | None = None
    usage: ResponseUsage | None = None
    metadata: dict[str, str] = Field(default_factory=dict)


class Deleted(_Shape):
    """A deleted object (`object` names its kind, e.g. response, conversation.deleted)."""

    id: str
    object: str
    deleted: bool


class ItemList(_Shape):
    """A page of items, OpenAI's list shape."""

    object: Literal["list"]
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool


class Conversation(_Shape):
    """OpenAI's conversation object (its items are listed apart)."""

    id: str
    object: Literal["conversation"]
    created_at: int
    metadata: dict[str, str]


class AnthropicUsage(_Shape):
    input_tokens: int
    output_tokens: int


class AnthropicMessage(_Shape):
    """Anthropic's `message` object (content blocks: text and tool_use)."""

    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    model: str
    content: list[dict[str, Any]]
    stop_reason: str | None
    stop_sequence: str | None = None
    usage: AnthropicUsage


class TokenCount(_Shape):
    input_tokens: int


class Embedding(_Shape):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str = Field(description="Floats, or base64 when encoding_format is base64.")


class EmbeddingUsage(_Shape):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(_Shape):
    """OpenAI's embeddings response."""

    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class ModelCard(_Shape):
    """OpenAI's model object; `opsgate` says what it is (router or prompt), its version and hash."""

    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    opsgate: dict[str, Any]


class ModelList(_Shape):
    object: Literal["list"]
    data: list[ModelCard]


class MLModelCard(_Shape):
    """A classic model: `opsgate` holds its version, aliases, task, input schema and labels."""

    id: str
    object: Literal["model"]
    opsgate: dict[str, Any]


class MLModelList(_Shape):
    object: Literal["list"]
    data: list[MLModelCard]


class Predictions(_Shape):
    """opsgate's prediction answer: one item per row, with its id (`<request id>:<row>`)."""

    model: str
    version: int
    ref: str
    predictions: list[dict[str, Any]]
    violations: list[dict[str, Any]] | None = None


class MLflowPredictions(_Shape):
    predictions: list[Any]


class FeedbackAccepted(_Shape):
    accepted: int


class Health(_Shape):
    status: Literal["ok"]


class Readiness(_Shape):
    """`status` is "ready" or "degraded" (200: can serve; `degraded` names the outages, e.g. database,
    redis) or "not ready" (503); `checks` says what was checked and what failed."""

    status: Literal["ready", "degraded", "not ready"]
    degraded: list[str] = Field(default_factory=list)
    checks: dict[str, Any]


READINESS: dict[int | str, dict[str, Any]] = {
    200: {"model": Readiness, "description": "Can serve (status ready, or degraded naming the outages)."},
    503: {"model": Readiness, "description": "Cannot serve: `checks` says why."},
}


class PredictRequest(BaseModel):
    """opsgate's prediction request: rows as objects (column -> value)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    records: list[dict[str, Any]] = Field(
        min_length=1, description="Rows: objects of column -> value (the model card lists the columns)."
    )
    explain: bool = Field(False, description="Add each row's SHAP explanation.")
    user: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="The application's end-user id: under a rollout, each user stays in one arm.",
    )


# -- the builder ------------------------------------------------------------------------------------------

BEARER = "bearerAuth"


def install(app: FastAPI, *, extra_params: Iterable[str] = ()) -> None:
    """Replace `app.openapi` with the builder described at the top of this module (built once, cached)."""
    extras = sorted(set(extra_params))

    def build() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
            servers=app.servers,
        )
        finish(doc, extras)
        app.openapi_schema = doc
        return doc

    app.openapi = build  # type: ignore[method-assign]


def _is_error_body(answer: dict[str, Any]) -> bool:
    schemas = [media.get("schema", {}) for media in answer.get("content", {}).values()]
    return any(schema.get("$ref", "").endswith("ErrorBody") for schema in schemas)


def finish(doc: dict[str, Any], extra_params: list[str]) -> None:
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    secured = False
    for item in doc.get("paths", {}).values():
        for operation in item.values():
            if not isinstance(operation, dict):
                continue
            for name, schema in operation.pop("x-opsgate-schemas", {}).items():
                schemas.setdefault(name, schema)
            answers = operation.get("responses", {})
            error_content = {"application/json": {"schema": {"$ref": REF.format(model="ErrorBody")}}}
            if "422" in answers:
                answers["422"] = {"description": ERROR_DESCRIPTIONS[422], "content": error_content}
            for status, answer in answers.items():
                # an error is JSON whatever the route answers on success (FastAPI documents a declared
                # model under the route's media type: text/plain for /metrics)
                if status[0] in "45" and _is_error_body(answer):
                    answer["content"] = {"application/json": answer["content"].popitem()[1]}
            if "401" in answers:
                operation["security"] = [{BEARER: []}]
                secured = True
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for name, schema in carry(ErrorBody)["x-opsgate-schemas"].items():
        schemas.setdefault(name, schema)
    for name in ("ChatRequest", "EmbeddingRequest"):
        if name in schemas:
            props = schemas[name].setdefault("properties", {})
            for param in extra_params:
                props.setdefault(param, {"description": "Allowed by the operator (egress.request_params)."})
    if secured:
        components.setdefault("securitySchemes", {})[BEARER] = {
            "type": "http",
            "scheme": "bearer",
            "description": "An opsgate API key: `Authorization: Bearer <key>`.",
        }
