"""Anthropic's Messages API (`/v1/messages`) bridged to chat completions.

Request: `system` (a string or text blocks), `messages` with text, image, `tool_use` and `tool_result`
blocks, `tools` (name, description, input_schema), `tool_choice` (auto, any, tool, none), `max_tokens`,
`stop_sequences`, `output_config` (effort; format json_schema), `metadata.user_id`, `thinking`, and the
sampling parameters older clients send (`temperature`, `top_p`; `top_k` is an upstream parameter the
operator must allow, like any provider-specific one). `cache_control` is accepted as the hint it is. Answer: a `message` with text and
`tool_use` blocks and Anthropic's stop reasons; streamed as message_start, content_block_start /
content_block_delta (text_delta, input_json_delta) / content_block_stop per block, message_delta (stop
reason, usage), message_stop. Errors use Anthropic's shape: {"type": "error", "error": {"type", "message"}}.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
from pydantic import Field

from gateway.api_requests import ChatRequest
from gateway.errors import OpsgateError
from gateway.shapes import Json
from gateway.surfaces.common import Strict, gateway_fields, parse, unsupported

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                "content_filter": "refusal"}  # fmt: skip
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 422: "invalid_request_error",
               429: "rate_limit_error", 503: "overloaded_error", 529: "overloaded_error"}  # fmt: skip


class OutputFormat(Strict):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(Strict):
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None
    format: OutputFormat | None = None


class MessagesRequest(Strict):
    """Anthropic's Messages create request (docs.anthropic.com/en/api/messages)."""

    model: str = Field(min_length=1)
    max_tokens: int = Field(ge=1)
    messages: list[dict[str, Any]]
    system: str | list[dict[str, Any]] | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0)
    stream: bool = False
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None
    output_config: OutputConfig | None = None
    cache_control: dict[str, Any] | None = None  # a caching hint: accepted, changes no answer, not sent on
    service_tier: Literal["auto"] | None = None
    # the gateway's own fields
    prompt_variables: dict[str, Any] | None = None
    opsgate: dict[str, Any] | None = None


class CountRequest(Strict):
    model: str = Field(min_length=1)
    messages: list[dict[str, Any]]
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None
    # accepted as in create (found by the SDK's own tests): neither changes what the input counts
    cache_control: dict[str, Any] | None = None
    output_config: OutputConfig | None = None


def parse_request(data: Any) -> MessagesRequest:
    return parse(MessagesRequest, data)


def chat_messages(system: str | list[Json] | None, messages: list[Json]) -> list[Json]:
    out: list[Json] = []
    if system:
        text = (
            system
            if isinstance(system, str)
            else "\n".join(_block_text("system", i, b) for i, b in enumerate(system))
        )
        out.append({"role": "system", "content": text})
    for i, message in enumerate(messages):
        out.extend(_message(i, message))
    return out


def _block_text(where: str, i: int, block: Any) -> str:
    if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
        raise unsupported(f"{where}.{i}", "must be a text block ({type: text, text})")
    return str(block["text"])


def _message(i: int, message: Json) -> list[Json]:
    role = message.get("role")
    if role not in ("user", "assistant"):
        raise unsupported(f"messages.{i}.role", "must be user or assistant")
    content = message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise unsupported(f"messages.{i}.content", "must be a string or a list of content blocks")
    results: list[Json] = []
    parts: list[Json] = []
    calls: list[Json] = []
    for j, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        where = f"messages.{i}.content.{j}"
        if kind == "text":
            parts.append({"type": "text", "text": _block_text(f"messages.{i}.content", j, block)})
        elif kind == "image" and role == "user":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(where, block["source"])}})
        elif kind == "tool_use" and role == "assistant":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            calls.append({"id": block.get("id"), "type": "function",
                          "function": {"name": block.get("name"), "arguments": arguments}})  # fmt: skip
        elif kind == "tool_result" and role == "user":
            results.append(
                {
                    "role": "tool",
                    "tool_call_id": block.get("tool_use_id"),
                    "content": _result_text(where, block),
                }
            )
        else:
            raise unsupported(where, f"{kind!r} blocks are not served in {role} messages")
    out = list(results)
    if role == "assistant":
        text = "".join(p["text"] for p in parts)
        assistant: Json = {"role": "assistant", "content": text or None}
        if calls:
            assistant["tool_calls"] = calls
        out.append(assistant)
    elif parts:
        only_text = all(p["type"] == "text" for p in parts)
        out.append({"role": "user", "content": "".join(p["text"] for p in parts) if only_text else parts})
    return out


def _image_url(where: str, source: Any) -> str:
    if isinstance(source, dict) and source.get("type") == "base64":
        return f"data:{source.get('media_type')};base64,{source.get('data')}"
    if isinstance(source, dict) and source.get("type") == "url" and isinstance(source.get("url"), str):
        return str(source["url"])
    raise unsupported(f"{where}.source", "images by base64 data or URL only")


def _result_text(where: str, block: Json) -> str:
    content = block.get("content")
    if content is None or isinstance(content, str):
        text = content or ""
    else:
        text = "".join(_block_text(f"{where}.content", k, b) for k, b in enumerate(content))
    return f"[error] {text}" if block.get("is_error") else text


def chat_tools(tools: list[Json]) -> list[Json]:
    out = []
    for i, tool in enumerate(tools):
        if tool.get("type") not in (None, "custom") or not isinstance(tool.get("name"), str):
            raise unsupported(
                f"tools.{i}", "only client tools ({name, description, input_schema}) are served"
            )
        function = {"name": tool["name"], "parameters": tool.get("input_schema") or {"type": "object"}}
        if tool.get("description"):
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Json) -> tuple[Any, bool | None]:
    kind = choice.get("type")
    parallel = (
        None if choice.get("disable_parallel_tool_use") is None else not choice["disable_parallel_tool_use"]
    )
    if kind == "auto":
        return "auto", parallel
    if kind == "any":
        return "required", parallel
    if kind == "none":
        return "none", parallel
    if kind == "tool" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}, parallel
    raise unsupported("tool_choice", "auto, any, none, or {type: tool, name}")


def to_chat(request: MessagesRequest) -> ChatRequest:
    body: Json = {"model": request.model, "messages": chat_messages(request.system, request.messages),
                  "max_tokens": request.max_tokens}  # fmt: skip
    if request.stop_sequences:
        body["stop"] = request.stop_sequences
    for key in ("temperature", "top_p", "top_k", "thinking"):
        value = getattr(request, key)
        if value is not None:
            body[key] = value
    if request.tools:
        body["tools"] = chat_tools(request.tools)
    if request.tool_choice:
        body["tool_choice"], parallel = _tool_choice(request.tool_choice)
        if parallel is not None and request.tools:
            body["parallel_tool_calls"] = parallel
    config = request.output_config
    if config is not None and config.effort is not None:
        body["reasoning_effort"] = "xhigh" if config.effort == "max" else config.effort
    if config is not None and config.format is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": config.format.schema_, "strict": True},
        }
    user = (request.metadata or {}).get("user_id")
    if isinstance(user, str):
        body["user"] = user
    if request.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    body.update(
        gateway_fields(request.model_dump(include={"prompt_variables", "opsgate"}, exclude_none=True))
    )
    return ChatRequest.parse(body)


# -- answers ----------------------------------------------------------------------------------------------


def _input(arguments: str) -> Any:
    try:
        return orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return {"_raw": arguments}  # the model wrote invalid JSON: kept, not lost


def usage_of(usage: Json | None) -> Json:
    usage = usage or {}
    return {
        "input_tokens": int(usage.get("prompt_tokens") or 0),
        "output_tokens": int(usage.get("completion_tokens") or 0),
    }


def message_object(message_id: str, model: str, chat: Json) -> Json:
    choice = (chat.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[Json] = []
    if isinstance(message.get("content"), str) and message["content"]:
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id"), "name": function.get("name"),
                        "input": _input(function.get("arguments", ""))})  # fmt: skip
    data: Json = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": STOP_REASONS.get(choice.get("finish_reason") or "stop", "end_turn"),
        "stop_sequence": None,
        "usage": usage_of(chat.get("usage")),
    }
    if "citations" in chat:
        data["opsgate_citations"] = chat["citations"]
    return data


def error_body(error: OpsgateError) -> bytes:
    kind = ERROR_TYPES.get(error.status, "api_error" if error.status >= 500 else "invalid_request_error")
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": error.message}})


class MessagesEncoder:
    """Chat chunks as Anthropic's stream events."""

    wants_usage = True

    def __init__(self, message_id: str, model: str) -> None:
        self.id = message_id
        self.model = model
        self.started = False
        self.block = -1  # index of the open content block
        self.open_kind: str | None = None
        self.calls: dict[int, int] = {}  # chat tool index -> block index
        self.finish: str | None = None

    @staticmethod
    def _event(kind: str, data: Json) -> bytes:
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"

    def _start(self) -> bytes:
        self.started = True
        message: Json = {"id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": [],
                   "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}  # fmt: skip
        return self._event("message_start", {"message": message})

    def _open(self, kind: str, block: Json) -> bytes:
        out = self._close()
        self.block += 1
        self.open_kind = kind
        return out + self._event("content_block_start", {"index": self.block, "content_block": block})

    def _close(self) -> bytes:
        if self.open_kind is None:
            return b""
        self.open_kind = None
        return self._event("content_block_stop", {"index": self.block})

    def chunk(self, chunk: Json) -> bytes:
        out = b"" if self.started else self._start()
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                if self.open_kind != "text":
                    out += self._open("text", {"type": "text", "text": ""})
                out += self._event(
                    "content_block_delta",
                    {"index": self.block, "delta": {"type": "text_delta", "text": text}},
                )
            for call in delta.get("tool_calls") or ():
                index = int(call.get("index") or 0)
                function = call.get("function") or {}
                if index not in self.calls:
                    block = {
                        "type": "tool_use",
                        "id": call.get("id"),
                        "name": function.get("name", ""),
                        "input": {},
                    }
                    out += self._open("tool_use", block)
                    self.calls[index] = self.block
                arguments = function.get("arguments")
                if isinstance(arguments, str) and arguments:
                    delta_event = {"type": "input_json_delta", "partial_json": arguments}
                    out += self._event(
                        "content_block_delta", {"index": self.calls[index], "delta": delta_event}
                    )
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return out

    def end(self, meta: Json, usage: dict[str, Any] | None, counted: bool) -> bytes:
        out = (b"" if self.started else self._start()) + self._close()
        delta = {"stop_reason": STOP_REASONS.get(self.finish or "stop", "end_turn"), "stop_sequence": None}
        out += self._event("message_delta", {"delta": delta, "usage": usage_of(usage)})
        return out + self._event("message_stop", {})

    def error(self, out: list[bytes], meta: Json, error: OpsgateError) -> bytes:
        return b"".join([*out, b"event: error\ndata: " + error_body(error) + b"\n\n"])
