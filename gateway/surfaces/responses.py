"""The Responses API (`/v1/responses`) bridged to chat completions.

Request: `input` (a string, or items: messages with text/image parts, `function_call` and
`function_call_output`), `instructions` (a system message, not carried to the next turn, as OpenAI),
`previous_response_id` (the stored conversation it continues) or `conversation` (a conversation object's
items; gateway/surfaces/conversations.py), function `tools`, `tool_choice`, `text.format` (json_schema /
json_object), sampling parameters. What the bridge cannot honour (hosted tools, background mode,
logprobs) is a 400 naming the parameter.

Answer: a `response` object (message and function_call output items, usage in input/output tokens), or,
streamed, the Responses event sequence: response.created, response.in_progress, for each item
output_item.added, (content_part.added, output_text.delta..., output_text.done, content_part.done |
function_call_arguments.delta..., function_call_arguments.done), output_item.done, and
response.completed last, with usage. Item ids derive from the response id, so a stored response
retrieves with the ids its stream carried.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from pydantic import Field

from gateway.api_requests import GATEWAY_FIELDS, ChatRequest
from gateway.errors import OpsgateError
from gateway.shapes import Json
from gateway.surfaces.common import Strict, gateway_fields, parse, unsupported


class TextFormat(Strict):
    type: Literal["text", "json_schema", "json_object"]
    name: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextOptions(Strict):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class Reasoning(Strict):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None
    context: str | None = None  # known, refused: the chat bridge has no reasoning context to keep
    mode: str | None = None


class ResponsesRequest(Strict):
    """OpenAI's Responses create request (platform.openai.com/docs/api-reference/responses/create)."""

    model: str = Field(min_length=1)
    input: str | list[dict[str, Any]] = Field(default_factory=list)
    instructions: str | None = None
    previous_response_id: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    max_output_tokens: int | None = Field(None, ge=1)
    store: bool = True
    metadata: dict[str, str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    service_tier: str | None = None
    reasoning: Reasoning | None = None
    truncation: Literal["auto", "disabled"] | None = None
    include: list[str] | None = None
    background: bool | None = None
    top_logprobs: int | None = None
    max_tool_calls: int | None = None
    conversation: str | dict[str, Any] | None = None
    # in OpenAI's reference, refused when set (the chat bridge cannot honour them): named, never dropped
    context_management: list[dict[str, Any]] | None = None
    moderation: dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
    prompt_cache_options: dict[str, Any] | None = None
    # the gateway's own fields
    prompt_variables: dict[str, Any] | None = None
    prompt_id: str | None = None
    prompt_version: int | str | None = None
    opsgate: dict[str, Any] | None = None


@dataclass(slots=True)
class Turn:
    """One Responses call on its way through the chat flow."""

    request: ResponsesRequest
    id: str
    created_at: int
    history: list[Json] = field(default_factory=list)  # messages before this turn's input
    conversation_id: str | None = None  # the conversation object it continues (and is added to)
    input_messages: list[Json] = field(default_factory=list)

    @property
    def hex(self) -> str:
        return self.id.removeprefix("resp_")

    @property
    def conversation(self) -> list[Json]:
        """The messages this turn sent (without instructions): what a next turn continues from."""
        return self.history + self.input_messages


_UNSERVED = {
    "context_management": "the chat bridge does not compact context; leave it out",
    "moderation": "moderation is the gateway's policies here (docs/policies.md); leave it out",
    "prompt": "OpenAI-hosted prompts are not served; name an opsgate prompt as the model (or prompt_id)",
    "prompt_cache_options": "leave it out (prompt_cache_key and prompt_cache_retention are passed on)",
}


def parse_request(data: Any) -> ResponsesRequest:
    """The caller's body as a request; its parameters are checked against the egress allow-list first, by
    the route (gateway/api/responses.py: this layer does not know the egress rules)."""
    request = parse(ResponsesRequest, data)
    if request.background:
        raise unsupported("background", "background responses are not available through this gateway")
    if request.top_logprobs:
        raise unsupported("top_logprobs", "log probabilities are not available through the chat bridge")
    if request.max_tool_calls is not None:
        raise unsupported("max_tool_calls", "the chat bridge cannot cap tool calls; leave it out")
    if request.conversation is not None:
        if request.previous_response_id is not None:
            raise unsupported("conversation", "send conversation or previous_response_id, not both")
        if not request.store:
            raise unsupported("store", "a response in a conversation is stored (leave store out, or true)")
    if request.include:
        raise unsupported("include", "no extra output data is available through the chat bridge")
    for name, why in _UNSERVED.items():
        if getattr(request, name) is not None:
            raise unsupported(name, why)
    if request.reasoning is not None:
        for name in ("context", "mode"):
            if getattr(request.reasoning, name) is not None:
                raise unsupported(f"reasoning.{name}", "only reasoning.effort reaches the upstream (as chat's"
                                  " reasoning_effort); leave it out")  # fmt: skip
    if (
        not request.input
        and request.previous_response_id is None
        and request.prompt_id is None
        and (request.conversation is None)
    ):
        raise unsupported("input", "send the input (a string or a list of input items)")
    return request


def native_body(body: Json) -> Json:
    """The caller's body as a deployment serving the Responses API natively gets it: without the gateway's
    own fields and `store` (the gateway keeps the response; the provider is not asked to)."""
    dropped = ("store", "stream_options", "previous_response_id", "conversation")
    return {k: v for k, v in body.items() if k not in GATEWAY_FIELDS and k not in dropped}


def may_be_native(request: ResponsesRequest) -> bool:
    """Whether a deployment serving /responses natively may get this call as it came: not streamed, and
    no state of the gateway's own to rebuild (previous_response_id, conversation: those are bridged)."""
    return not request.stream and request.previous_response_id is None and request.conversation is None


def conversation_id(request: ResponsesRequest) -> str | None:
    """The conversation a request continues: `conversation` as an id, or `{"id": ...}`."""
    value = request.conversation
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value.get("id"), str):
        raise unsupported("conversation.id", "a conversation is its id, or {id: <conversation id>}")
    return str(value["id"])


def to_chat(turn: Turn) -> ChatRequest:
    """The chat request this turn makes: instructions, the conversation so far, the new input."""
    request = turn.request
    turn.input_messages = input_messages(request.input)
    messages = list(turn.conversation)
    if request.instructions:
        messages.insert(0, {"role": "system", "content": request.instructions})
    body: Json = {"model": request.model, "messages": messages, "store": request.store}
    if request.tools is not None:
        body["tools"] = [_chat_tool(i, tool) for i, tool in enumerate(request.tools)]
    if request.tool_choice is not None:
        body["tool_choice"] = _chat_tool_choice(request.tool_choice)
    fmt = request.text.format if request.text else None
    if fmt is not None and fmt.type != "text":
        body["response_format"] = _response_format(fmt)
    if request.text and request.text.verbosity:
        body["verbosity"] = request.text.verbosity
    if request.reasoning and request.reasoning.effort:
        body["reasoning_effort"] = request.reasoning.effort
    simple = {
        "temperature": request.temperature, "top_p": request.top_p, "max_tokens": request.max_output_tokens,
        "parallel_tool_calls": request.parallel_tool_calls, "user": request.user, "metadata": request.metadata,
        "safety_identifier": request.safety_identifier, "prompt_cache_key": request.prompt_cache_key,
        "prompt_cache_retention": request.prompt_cache_retention, "service_tier": request.service_tier,
    }  # fmt: skip
    body.update({k: v for k, v in simple.items() if v is not None})
    if request.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}  # response.completed carries the usage
    body.update(
        gateway_fields(
            request.model_dump(
                include={"prompt_variables", "prompt_id", "prompt_version", "opsgate"}, exclude_none=True
            )
        )
    )
    return ChatRequest.parse(body)


# -- input items -> chat messages ---------------------------------------------------------------------


def input_messages(value: str | list[Json]) -> list[Json]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    messages: list[Json] = []
    for i, item in enumerate(value):
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message(i, item))
        elif kind == "function_call":
            call = {
                "id": _str(i, item, "call_id"),
                "type": "function",
                "function": {"name": _str(i, item, "name"), "arguments": _str(i, item, "arguments")},
            }
            last = messages[-1] if messages else None
            if last is not None and last.get("role") == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)  # parallel calls: one assistant message
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else orjson.dumps(output).decode()
            messages.append({"role": "tool", "tool_call_id": _str(i, item, "call_id"), "content": text})
        else:
            raise unsupported(f"input.{i}.type", f"{kind!r} items are not served (message, function_call and "
                              "function_call_output are)")  # fmt: skip
    return messages


def _str(i: int, item: Json, key: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise unsupported(f"input.{i}.{key}", "must be a string")
    return value


def _message(i: int, item: Json) -> Json:
    role = item.get("role")
    if role not in ("user", "system", "developer", "assistant"):
        raise unsupported(f"input.{i}.role", "must be user, system, developer or assistant")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise unsupported(f"input.{i}.content", "must be a string or a list of content parts")
    parts: list[Json] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"]}})
        else:
            raise unsupported(
                f"input.{i}.content.{j}", "only input_text, output_text and input_image (by URL) parts"
            )
    if role == "assistant" or all(p["type"] == "text" for p in parts):
        return {"role": role, "content": "".join(p.get("text", "") for p in parts)}
    return {"role": role, "content": parts}


def _chat_tool(i: int, tool: Json) -> Json:
    if tool.get("type") != "function" or not isinstance(tool.get("name"), str):
        raise unsupported(f"tools.{i}", "only function tools ({type: function, name, parameters}) are served")
    function = {
        k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None
    }
    return {"type": "function", "function": function}


def _chat_tool_choice(choice: str | Json) -> Any:
    if isinstance(choice, str):
        return choice
    if choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise unsupported("tool_choice", "auto, none, required, or {type: function, name}")


def _response_format(fmt: TextFormat) -> Json:
    if fmt.type == "json_object":
        return {"type": "json_object"}
    schema: Json = {"name": fmt.name or "response", "schema": fmt.schema_ or {}}
    if fmt.strict is not None:
        schema["strict"] = fmt.strict
    if fmt.description:
        schema["description"] = fmt.description
    return {"type": "json_schema", "json_schema": schema}


# -- chat completion -> response ----------------------------------------------------------------------


def message_item(turn: Turn, index: int, text: str, status: str = "completed") -> Json:
    return {
        "id": f"msg_{turn.hex}_{index}",
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
        if status == "completed"
        else [],
    }


def call_item(turn: Turn, index: int, call: Json, status: str = "completed") -> Json:
    function = call.get("function") or {}
    return {
        "id": f"fc_{turn.hex}_{index}",
        "type": "function_call",
        "status": status,
        "call_id": call.get("id") or f"call_{turn.hex}_{index}",
        "name": function.get("name", ""),
        "arguments": function.get("arguments", "") if status == "completed" else "",
    }


def usage_of(usage: Json | None) -> Json | None:
    if not usage:
        return None
    prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def native_chat(response: Json) -> Json:
    """A Responses API answer (from a deployment that serves it natively) as the chat completion the
    flow reads (text, tool calls, finish reason, usage), the answer itself kept under `native_response`
    (what the caller gets back, see `response_object`)."""
    output = [item for item in response.get("output") or () if isinstance(item, dict)]
    text = "".join(
        part.get("text", "")
        for item in output
        if item.get("type") == "message"
        for part in item.get("content") or ()
        if isinstance(part, dict) and part.get("type") == "output_text"
    )
    calls = [
        {"id": item.get("call_id"), "type": "function",
         "function": {"name": item.get("name", ""), "arguments": item.get("arguments", "")}}
        for item in output
        if item.get("type") == "function_call"
    ]  # fmt: skip
    message: Json = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    finish = "length" if response.get("status") == "incomplete" else "tool_calls" if calls else "stop"
    usage = response.get("usage") if isinstance(response.get("usage"), dict) else {}
    assert isinstance(usage, dict)
    return {
        "id": response.get("id"),
        "object": "chat.completion",
        "created": response.get("created_at"),
        "model": response.get("model"),
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": usage.get("input_tokens", 0), "completion_tokens": usage.get("output_tokens", 0),
                  "total_tokens": usage.get("total_tokens", 0)},
        "native_response": response,
    }  # fmt: skip


def response_object(turn: Turn, chat: Json, *, status: str | None = None) -> Json:
    """The `response` a chat completion makes (its first choice); for a natively served call, the
    upstream's own response, under the gateway's id, model name and store."""
    native = chat.get("native_response")
    # passed through only as the output checks left it: one that redacted or withheld the answer changed
    # the chat message, and the answer is then rendered from it (the bridge's way), never the original
    if isinstance(native, dict) and (chat.get("choices") or [None])[0] == native_chat(native)["choices"][0]:
        request = turn.request
        return native | {"id": turn.id, "created_at": turn.created_at, "model": request.model,
                         "store": request.store, "metadata": request.metadata or {}}  # fmt: skip
    choice = (chat.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    output: list[Json] = []
    content = message.get("content")
    if isinstance(content, str) and content:
        output.append(message_item(turn, 0, content))
    for i, call in enumerate(message.get("tool_calls") or ()):
        output.append(call_item(turn, i, call))
    finish = choice.get("finish_reason")
    data = skeleton(turn, status or ("incomplete" if finish == "length" else "completed"))
    data["output"] = output
    if finish == "length":
        data["incomplete_details"] = {"reason": "max_output_tokens"}
    data["usage"] = usage_of(chat.get("usage"))
    if "citations" in chat:
        data["citations"] = chat["citations"]
    return data


def skeleton(turn: Turn, status: str) -> Json:
    request = turn.request
    fmt = request.text.format if request.text and request.text.format else None
    return {
        "id": turn.id,
        "object": "response",
        "created_at": turn.created_at,
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "model": request.model,
        "output": [],
        "parallel_tool_calls": request.parallel_tool_calls
        if request.parallel_tool_calls is not None
        else True,
        "previous_response_id": request.previous_response_id,
        "reasoning": {"effort": request.reasoning.effort if request.reasoning else None, "summary": None},
        "store": request.store,
        "temperature": request.temperature,
        "text": {"format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}},
        "tool_choice": request.tool_choice if request.tool_choice is not None else "auto",
        "tools": request.tools or [],
        "top_p": request.top_p,
        "truncation": request.truncation or "disabled",
        "usage": None,
        "user": request.user,
        "metadata": request.metadata or {},
    } | ({"conversation": {"id": turn.conversation_id}} if turn.conversation_id else {})


def output_messages(response: Json) -> list[Json]:
    """A stored response's output as chat messages (for the next turn of the conversation)."""
    text = "".join(
        part.get("text", "")
        for item in response.get("output") or ()
        if item.get("type") == "message"
        for part in item.get("content") or ()
    )
    calls = [
        {
            "id": item["call_id"],
            "type": "function",
            "function": {"name": item["name"], "arguments": item["arguments"]},
        }
        for item in response.get("output") or ()
        if item.get("type") == "function_call"
    ]
    message: Json = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    return [message]


def input_items(turn_request: Json, response_id: str) -> list[Json]:
    """The input items of a stored response, as OpenAI lists them (messages get ids)."""
    raw = turn_request.get("input")
    items = [{"type": "message", "role": "user", "content": raw}] if isinstance(raw, str) else list(raw or [])
    out: list[Json] = []
    for i, raw_item in enumerate(items):
        item: Json = {"type": "message", **raw_item}
        if item["type"] == "message":
            content = item.get("content")
            if isinstance(content, str):
                item["content"] = [{"type": "input_text", "text": content}]
            item.setdefault("status", "completed")
        item.setdefault("id", f"item_{response_id.removeprefix('resp_')}_{i}")
        out.append(item)
    return out


# -- streaming ------------------------------------------------------------------------------------------


class ResponsesEncoder:
    """Chat chunks as the Responses API's events (see the module docstring for the order)."""

    wants_usage = True

    def __init__(self, turn: Turn) -> None:
        self.turn = turn
        self.seq = 0
        self.started = False
        self.text: list[str] | None = None  # the open message item's text
        self.text_index = -1
        self.calls: dict[int, tuple[int, Json]] = {}  # chat tool index -> (output index, item)
        self.output: list[Json] = []
        self.finish: str | None = None
        self.citations: Any = None  # a RAG prompt's citations ride on the first chunk

    def _event(self, kind: str, data: Json) -> bytes:
        data = {"type": kind, "sequence_number": self.seq, **data}
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def _start(self) -> bytes:
        self.started = True
        response = skeleton(self.turn, "in_progress")
        return self._event("response.created", {"response": response}) + self._event(
            "response.in_progress", {"response": response}
        )

    def chunk(self, chunk: Json) -> bytes:
        out = b"" if self.started else self._start()
        if "citations" in chunk:
            self.citations = chunk["citations"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue  # the Responses API has one output per response
            delta = choice.get("delta") or {}
            piece = delta.get("content")
            if isinstance(piece, str) and piece:
                out += self._text(piece)
            for call in delta.get("tool_calls") or ():
                out += self._call(call)
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return out

    def _text(self, piece: str) -> bytes:
        out = b""
        if self.text is None:
            self.text = []
            self.text_index = len(self.output)
            item = message_item(self.turn, 0, "", status="in_progress")
            self.output.append(item)
            out += self._event("response.output_item.added", {"output_index": self.text_index, "item": item})
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            out += self._event("response.content_part.added", self._where(item) | {"part": part})
        self.text.append(piece)
        item = self.output[self.text_index]
        return out + self._event(
            "response.output_text.delta", self._where(item) | {"delta": piece, "logprobs": []}
        )

    def _where(self, item: Json) -> Json:
        return {"item_id": item["id"], "output_index": self.output.index(item), "content_index": 0}

    def _call(self, delta: Json) -> bytes:
        out = b""
        index = int(delta.get("index") or 0)
        if index not in self.calls:
            out += self._close_text()
            function = delta.get("function") or {}
            call = {"id": delta.get("id"), "function": {"name": function.get("name", "")}}
            item = call_item(self.turn, index, call, status="in_progress")
            self.calls[index] = (len(self.output), item)
            self.output.append(item)
            out += self._event(
                "response.output_item.added", {"output_index": len(self.output) - 1, "item": item}
            )
        position, item = self.calls[index]
        arguments = (delta.get("function") or {}).get("arguments")
        if isinstance(arguments, str) and arguments:
            item["arguments"] += arguments
            out += self._event(
                "response.function_call_arguments.delta",
                {"item_id": item["id"], "output_index": position, "delta": arguments},
            )
        return out

    def _close_text(self) -> bytes:
        if self.text is None or self.output[self.text_index]["status"] == "completed":
            return b""
        text = "".join(self.text)
        done = message_item(self.turn, 0, text)
        self.output[self.text_index] = done
        where = {"item_id": done["id"], "output_index": self.text_index, "content_index": 0}
        return (
            self._event("response.output_text.done", where | {"text": text, "logprobs": []})
            + self._event("response.content_part.done", where | {"part": done["content"][0]})
            + self._event("response.output_item.done", {"output_index": self.text_index, "item": done})
        )

    def end(self, meta: Json, usage: dict[str, Any] | None, counted: bool) -> bytes:
        out = (b"" if self.started else self._start()) + self._close_text()
        for position, item in self.calls.values():
            item["status"] = "completed"
            out += self._event(
                "response.function_call_arguments.done",
                {
                    "item_id": item["id"],
                    "output_index": position,
                    "name": item["name"],
                    "arguments": item["arguments"],
                },
            )
            out += self._event("response.output_item.done", {"output_index": position, "item": item})
        response = skeleton(self.turn, "incomplete" if self.finish == "length" else "completed")
        if self.finish == "length":
            response["incomplete_details"] = {"reason": "max_output_tokens"}
        response["output"] = self.output
        response["usage"] = usage_of(usage)
        if self.citations is not None:
            response["citations"] = self.citations
        return out + self._event("response.completed", {"response": response})

    def error(self, out: list[bytes], meta: Json, error: OpsgateError) -> bytes:
        failed = skeleton(self.turn, "failed")
        failed["output"] = self.output
        failed["error"] = {"code": error.code or "server_error", "message": error.message}
        events = self._event("error", {"code": error.code, "message": error.message, "param": error.param})
        return b"".join([*out, events, self._event("response.failed", {"response": failed})])
