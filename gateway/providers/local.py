"""The embedded local provider: an adapter like any other, so it takes the same route as any upstream.

Chat: the deterministic extractive answerer (`extractive.py`). Embeddings: the packaged MiniLM model.
Deployment models: `local/extractive` for chat, `local/all-MiniLM-L6-v2` (or `local/minilm`) for embeddings.

Its work runs in worker threads, never on the event loop, and a chat request's messages are bounded
(`limits.local.max_input_chars`: larger ones get 400 `input_too_large`, param `messages`).
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from gateway.errors import UpstreamRejected
from gateway.limits import LocalLimits
from gateway.providers import extractive
from gateway.providers.base import AdapterServices, Json
from gateway.providers.deployment import Deployment
from gateway.providers.minilm import MODEL_NAME, MiniLMEmbedder
from gateway.tokens_cost import count_message_tokens, count_text_tokens, encoding_for, message_text

CHAT_MODELS = ("extractive",)
EMBED_MODELS = (MODEL_NAME, "minilm")
WORDS_PER_CHUNK = 4


class LocalAdapter:
    name = "local"

    def __init__(self, embedder: MiniLMEmbedder, limits: LocalLimits | None = None) -> None:
        self.embedder = embedder
        self.limits = limits or LocalLimits()

    async def close(self) -> None:
        return None

    def _check(self, deployment: Deployment, allowed: tuple[str, ...], what: str) -> None:
        if deployment.model_name not in allowed:
            raise UpstreamRejected(
                f"the local provider has no {what} model {deployment.model_name!r}; use one of: "
                + ", ".join(f"local/{m}" for m in allowed),
                retryable=False,
                deployment=deployment.id,
            )

    def _check_size(self, deployment: Deployment, messages: list[Any]) -> None:
        size = sum(len(message_text(m)) for m in messages)
        if size > self.limits.max_input_chars:
            error = UpstreamRejected(
                f"the messages hold {size} characters; the local provider takes at most"
                f" {self.limits.max_input_chars} (limits.local.max_input_chars)",
                retryable=False,
                deployment=deployment.id,
                code="input_too_large",
            )
            error.param = "messages"
            raise error

    async def chat(self, deployment: Deployment, body: Json) -> Json:
        self._check(deployment, CHAT_MODELS, "chat")
        messages = list(body.get("messages") or [])
        self._check_size(deployment, messages)
        text, finish, prompt_tokens, completion_tokens = await asyncio.to_thread(_answer, body, messages)
        n = _choices(body)  # deterministic: n identical choices, counted n times as OpenAI does
        return {
            "id": "chatcmpl-" + secrets.token_hex(12),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": deployment.model,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                    "logprobs": None,
                }
                for i in range(n)
            ],
            "usage": _usage(prompt_tokens, completion_tokens * n),
        }

    async def chat_stream(self, deployment: Deployment, body: Json) -> AsyncIterator[Json]:
        self._check(deployment, CHAT_MODELS, "chat")
        messages = list(body.get("messages") or [])
        self._check_size(deployment, messages)
        text, finish, prompt_tokens, completion_tokens = await asyncio.to_thread(_answer, body, messages)
        base = {
            "id": "chatcmpl-" + secrets.token_hex(12),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": deployment.model,
        }
        n = _choices(body)
        words = text.split(" ")
        for index in range(n):  # one choice after the other, each with its own index
            yield {
                **base,
                "choices": [
                    {"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                ],
            }
            for i in range(0, len(words), WORDS_PER_CHUNK):
                piece = " ".join(words[i : i + WORDS_PER_CHUNK])
                if i + WORDS_PER_CHUNK < len(words):
                    piece += " "
                yield {
                    **base,
                    "choices": [{"index": index, "delta": {"content": piece}, "finish_reason": None}],
                }
                await asyncio.sleep(0)
            yield {**base, "choices": [{"index": index, "delta": {}, "finish_reason": finish}]}
        yield {
            **base,
            "choices": [],
            "usage": _usage(prompt_tokens, completion_tokens * n),
        }

    async def embed(self, deployment: Deployment, body: Json) -> Json:
        self._check(deployment, EMBED_MODELS, "embedding")
        texts = await asyncio.to_thread(_embedding_inputs, body.get("input"), deployment)
        vectors = await asyncio.to_thread(self.embedder.encode, texts)
        dims = body.get("dimensions")
        if isinstance(dims, int) and 0 < dims < vectors.shape[1]:
            vectors = vectors[:, :dims]
        as_base64 = body.get("encoding_format") == "base64"
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(vec.astype("<f4").tobytes()).decode()
                if as_base64
                else vec.tolist(),
            }
            for i, vec in enumerate(vectors)
        ]
        tokens = await asyncio.to_thread(self.embedder.count_tokens, texts)
        return {
            "object": "list",
            "data": data,
            "model": deployment.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }


def _choices(body: Json) -> int:
    n = body.get("n")
    return n if isinstance(n, int) and n > 1 else 1


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _answer(body: Json, messages: list[Any]) -> tuple[str, str, int, int]:
    """The reply, its finish reason, and the prompt and completion token counts (in a worker thread)."""
    text, finish = _reply(body)
    return text, finish, count_message_tokens(messages), count_text_tokens(text)


def _reply(body: Json) -> tuple[str, str]:
    """The answer and its finish reason; max_tokens / max_completion_tokens cut it as a model would."""
    text = extractive.answer(list(body.get("messages") or []))
    cap = body.get("max_completion_tokens") or body.get("max_tokens")
    if not isinstance(cap, int) or cap <= 0:
        return text, "stop"
    enc = encoding_for("")
    tokens = enc.encode(text, disallowed_special=())
    return (text, "stop") if len(tokens) <= cap else (enc.decode(tokens[:cap]), "length")


def _embedding_inputs(value: Any, deployment: Deployment) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    enc = encoding_for("")
    try:
        if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
            return [enc.decode(value)]
        if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
            return [enc.decode([int(t) for t in v]) for v in value]
    except BaseException as exc:  # tiktoken panics (a BaseException) on ids outside its vocabulary
        if isinstance(exc, KeyboardInterrupt | SystemExit | asyncio.CancelledError):
            raise
        error = UpstreamRejected(
            f"input holds a token id outside the vocabulary ({type(exc).__name__})",
            retryable=False,
            deployment=deployment.id,
            code="invalid_token_id",
        )
        error.param = "input"
        raise error from None
    raise UpstreamRejected(
        "input must be a string, a list of strings, or token arrays",
        retryable=False,
        deployment=deployment.id,
    )


def create(services: AdapterServices) -> LocalAdapter:
    return LocalAdapter(services.embedder, services.local_limits)
