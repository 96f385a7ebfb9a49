"""Legacy completions (`/v1/completions`) as a chat call: the prompt becomes one user message, the text
comes back as `text_completion` choices (streamed as `text_completion` chunks)."""

from __future__ import annotations

import time
from typing import Any

import orjson
from pydantic import Field

from gateway.api_requests import ChatRequest, StreamOptions
from gateway.errors import OpsgateError
from gateway.shapes import Json
from gateway.surfaces.common import Strict, gateway_fields, parse, unsupported

# passed to the chat call unchanged (same meaning in both APIs)
_SHARED = (
    "max_tokens", "temperature", "top_p", "n", "stop", "presence_penalty", "frequency_penalty", "seed",
    "user", "logit_bias", "stream", "stream_options",
)  # fmt: skip


class CompletionRequest(Strict):
    """OpenAI's completions request (platform.openai.com/docs/api-reference/completions/create)."""

    model: str = Field(min_length=1)
    prompt: str | list[str] = Field(description="One prompt (a list of one string is accepted).")
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = None
    user: str | None = None
    logit_bias: dict[str, int] | None = None
    echo: bool = False
    best_of: int | None = Field(None, ge=1, le=20)
    logprobs: int | None = Field(None, ge=0, le=5)
    suffix: str | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    # the gateway's own fields
    prompt_variables: dict[str, Any] | None = None
    prompt_id: str | None = None
    prompt_version: int | str | None = None
    opsgate: dict[str, Any] | None = None


def to_chat(data: Any) -> tuple[CompletionRequest, ChatRequest]:
    request = parse(CompletionRequest, data)
    if isinstance(request.prompt, list) and len(request.prompt) != 1:
        raise unsupported("prompt", "send one prompt per request (a string, or a list of one string)")
    if request.best_of not in (None, 1):
        raise unsupported("best_of", "only 1 is supported (the chat bridge makes one generation per choice)")
    if request.logprobs is not None:
        raise unsupported("logprobs", "token log probabilities are not available through the chat bridge")
    if request.suffix:
        raise unsupported("suffix", "insertion (text after the completion) is not available through chat")
    body: Json = {"model": request.model, "messages": [{"role": "user", "content": prompt_text(request)}]}
    sent = data if isinstance(data, dict) else {}
    body.update({k: sent[k] for k in _SHARED if k in sent})
    if request.store is not None:
        body["store"] = request.store
    if request.metadata is not None:
        body["metadata"] = request.metadata
    body.update(gateway_fields(sent))
    return request, ChatRequest.parse(body)


def prompt_text(request: CompletionRequest) -> str:
    return request.prompt if isinstance(request.prompt, str) else request.prompt[0]


def from_chat(request: CompletionRequest, data: Json, completion_id: str) -> Json:
    prefix = prompt_text(request) if request.echo else ""
    choices = []
    for choice in data.get("choices") or ():
        content = (choice.get("message") or {}).get("content")
        text = content if isinstance(content, str) else ""
        choices.append(
            {
                "text": prefix + text,
                "index": choice.get("index", 0),
                "logprobs": None,
                "finish_reason": _finish(choice.get("finish_reason")),
            }
        )
    out: Json = {
        "id": completion_id,
        "object": "text_completion",
        "created": data.get("created", int(time.time())),
        "model": data.get("model", ""),
        "choices": choices,
    }
    for key in ("usage", "system_fingerprint", "citations"):
        if key in data:
            out[key] = data[key]
    return out


def _finish(reason: Any) -> str | None:
    """Completions know stop, length and content_filter; a chat-only reason reads as stop."""
    return reason if reason in (None, "stop", "length", "content_filter") else "stop"


class CompletionEncoder:
    """Chat chunks as `text_completion` SSE chunks, then `data: [DONE]`."""

    def __init__(self, request: CompletionRequest, stream_id: str) -> None:
        self.request = request
        self.id = stream_id
        options = request.stream_options
        self.wants_usage = bool(options and options.include_usage)
        self._echoed: set[int] = set()

    def _chunk(self, meta: Json, choices: list[Json], usage: Json | None = None) -> bytes:
        data: Json = {
            "id": self.id,
            "object": "text_completion",
            "created": meta.get("created", 0),
            "model": meta.get("model", ""),
            "choices": choices,
        }
        if usage is not None:
            data["usage"] = usage
        return b"data: " + orjson.dumps(data) + b"\n\n"

    def chunk(self, chunk: Json) -> bytes:
        choices = []
        for choice in chunk.get("choices") or ():
            index = choice.get("index", 0)
            text = (choice.get("delta") or {}).get("content") or ""
            if self.request.echo and index not in self._echoed:
                self._echoed.add(index)
                text = prompt_text(self.request) + text
            reason = choice.get("finish_reason")
            if text or reason:
                choices.append(
                    {"text": text, "index": index, "logprobs": None, "finish_reason": _finish(reason)}
                )
        out = self._chunk(chunk, choices) if choices else b""
        if self.wants_usage and chunk.get("usage"):
            out += self._chunk(chunk, [], chunk["usage"])
        return out

    def end(self, meta: Json, usage: dict[str, Any] | None, counted: bool) -> bytes:
        tail = self._chunk(meta, [], usage) if counted and usage is not None else b""
        return tail + b"data: [DONE]\n\n"

    def error(self, out: list[bytes], meta: Json, error: OpsgateError) -> bytes:
        finish = self._chunk(meta, [{"text": "", "index": 0, "logprobs": None, "finish_reason": "error"}])
        return b"".join([*out, finish, b"data: " + orjson.dumps(error.to_openai()) + b"\n\n"])
