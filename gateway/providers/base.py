"""The adapter interface: how a router calls one deployment, whatever the provider.

Adapters speak OpenAI's wire format on both sides (request bodies, `chat.completion` and
`chat.completion.chunk` dicts, embedding lists) and raise only `UpstreamError` subclasses, so routing,
policies and logging behave the same for every provider.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any, Protocol

from gateway.errors import UpstreamError
from gateway.providers.minilm import MiniLMEmbedder
from gateway.registry.specs import Deployment

Json = dict[str, Any]


class Adapter(Protocol):
    name: str

    async def chat(self, deployment: Deployment, body: Json) -> Json:
        """A non-streaming chat completion (OpenAI `chat.completion` dict, with `usage` if known)."""
        ...

    def chat_stream(self, deployment: Deployment, body: Json) -> AsyncIterator[Json]:
        """Chunks (`chat.completion.chunk` dicts). Raises UpstreamError before or during the stream;
        ends only after a chunk with a finish_reason (or a usage-only chunk after it)."""
        ...

    async def embed(self, deployment: Deployment, body: Json) -> Json:
        """An OpenAI embeddings response (`{"object": "list", "data": [...], "usage": ...}`)."""
        ...

    async def close(self) -> None: ...


def api_key_for(deployment: Deployment) -> str | None:
    """The deployment's key, read from the environment variable its spec names (never from the spec)."""
    if deployment.api_key_env is None:
        return None
    value = os.environ.get(deployment.api_key_env)
    if not value:
        raise UpstreamError(
            f"deployment {deployment.id!r} needs the environment variable {deployment.api_key_env} "
            "(its API key), which is not set on the gateway",
            retryable=True,
            deployment=deployment.id,
            code="upstream_key_missing",
        )
    return value


def upstream_message(body: Any, fallback: str) -> str:
    """The human part of an upstream error body, whatever its shape."""
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
        if isinstance(err, str):
            return err
        if isinstance(body.get("detail"), str):
            return str(body["detail"])
    return fallback


class AdapterServices:
    """What the gateway hands to adapter factories (shared, long-lived parts)."""

    def __init__(self, embedder: MiniLMEmbedder) -> None:
        self.embedder = embedder
