"""The adapter interface: how a router calls one deployment, whatever the provider.

Adapters speak OpenAI's wire format on both sides (request bodies, `chat.completion` and
`chat.completion.chunk` dicts, embedding lists) and raise only `UpstreamError` subclasses, so routing,
policies and logging behave the same for every provider.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any, Protocol

from gateway.egress import Egress, EgressConfig
from gateway.egress.params import Kind, ParamRules
from gateway.errors import EgressDenied, UpstreamError
from gateway.limits import LocalLimits
from gateway.providers.deployment import Deployment
from gateway.providers.minilm import MiniLMEmbedder

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


def check_deployment(egress: Egress, deployment: Deployment, kind: Kind) -> None:
    """Before anything is read or sent: the deployment names only what the operator allows (a version
    registered before the rules changed is stopped here, naming what to configure)."""
    problems = egress.deployment_problems(deployment, kind)
    if problems:
        loc, message = problems[0]
        field = ".".join(str(p) for p in loc)
        raise EgressDenied(
            f"deployment {deployment.id!r} ({deployment.model}) was not called: {field}: {message}",
            deployment=deployment.id,
        )


def api_key_for(deployment: Deployment, egress: Egress | None = None) -> str | None:
    """The deployment's key, read from the environment variable its spec names (never from the spec);
    only a variable the operator allows is ever read."""
    if deployment.api_key_env is None:
        return None
    problem = egress.env_problem(deployment.api_key_env) if egress is not None else None
    if problem:
        raise EgressDenied(f"deployment {deployment.id!r}: api_key_env: {problem}", deployment=deployment.id)
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
    """What the gateway hands to adapter factories (shared, long-lived parts).

    `egress` holds the operator's allow-lists (config/gateway.yaml `egress`; its defaults when not given):
    every adapter that reaches the network checks a deployment with it before sending anything."""

    def __init__(
        self,
        embedder: MiniLMEmbedder,
        egress: Egress | EgressConfig | None = None,
        *,
        limits: LocalLimits | None = None,
    ) -> None:
        self.embedder = embedder
        self.egress = egress if isinstance(egress, Egress) else Egress(egress)
        self.local_limits = limits or LocalLimits()  # the local provider's input bounds

    @property
    def params(self) -> ParamRules:
        return self.egress.params
