"""Adapter for providers that need translation (Anthropic, Bedrock, Vertex, Cohere, ...) through litellm.

litellm is imported on first use (the import costs seconds). Its retries are off: retries, fallbacks and
cooldowns are the router's job, so every provider behaves the same. Errors are mapped by litellm's
exception classes and status codes, never by message text.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx

from gateway.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from gateway.providers.base import Json, api_key_for
from gateway.providers.openai_compat import status_error
from gateway.registry.specs import Deployment


class LiteLLMAdapter:
    name = "litellm"

    def __init__(self) -> None:
        self._litellm: Any = None

    def _lib(self) -> Any:
        if self._litellm is None:
            import litellm

            litellm.telemetry = False
            litellm.suppress_debug_info = True
            litellm.drop_params = True
            self._litellm = litellm
        return self._litellm

    async def close(self) -> None:
        return None

    def _kwargs(self, deployment: Deployment, body: Json) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            k: v for k, v in body.items() if k not in ("model", "stream", "stream_options")
        }
        kwargs.update(deployment.params)
        kwargs["model"] = deployment.model
        kwargs["timeout"] = deployment.timeout_s
        kwargs["num_retries"] = 0
        kwargs["max_retries"] = 0
        if deployment.api_base:
            kwargs["api_base"] = deployment.api_base
        key = api_key_for(deployment)
        if key:
            kwargs["api_key"] = key
        elif deployment.provider == "openai":
            kwargs["api_key"] = "none"  # litellm's openai client insists on a key; the upstream may not
        if deployment.headers:
            kwargs["extra_headers"] = dict(deployment.headers)
        return kwargs

    def _error(self, exc: Exception, deployment: Deployment) -> UpstreamError:
        lib = self._lib()
        where = f"deployment {deployment.id!r} ({deployment.model})"
        # litellm reports a refused or broken connection (and a stream that stalls) as a 500; the transport
        # error under its wrappers says what happened, so both adapters give the same status.
        transport = _transport_cause(exc)
        if isinstance(exc, (lib.Timeout, asyncio.TimeoutError)) or isinstance(transport, _TIMEOUT_ERRORS):
            return UpstreamTimeout(
                f"{where} did not answer within {deployment.timeout_s:g} s", deployment=deployment.id
            )
        if isinstance(transport, _CONNECT_ERRORS) or (
            transport is None and isinstance(exc, lib.APIConnectionError)
        ):
            return UpstreamUnavailable(f"{where} could not be reached: {exc}", deployment=deployment.id)
        if transport is not None:
            return UpstreamError(
                f"{where} broke the connection: {type(transport).__name__}: {transport}",
                deployment=deployment.id,
            )
        status = getattr(exc, "status_code", None)
        if isinstance(status, int) and status >= 400:
            response = getattr(exc, "response", None)
            headers = getattr(response, "headers", None)
            retry_after = None
            if headers is not None and headers.get("retry-after"):
                try:
                    retry_after = float(headers.get("retry-after"))
                except ValueError:
                    retry_after = None
            return status_error(
                status, {"error": {"message": str(getattr(exc, "message", exc))}}, deployment, retry_after
            )
        return UpstreamError(f"{where} failed: {type(exc).__name__}: {exc}", deployment=deployment.id)

    async def chat(self, deployment: Deployment, body: Json) -> Json:
        lib = self._lib()
        try:
            response = await lib.acompletion(**self._kwargs(deployment, body), stream=False)
        except UpstreamError:
            raise
        except Exception as exc:
            raise self._error(exc, deployment) from exc
        data: Json = response.model_dump(exclude_none=True)
        data.pop("_hidden_params", None)
        if not (data.get("usage") or {}).get("total_tokens"):
            data.pop("usage", None)  # litellm's all-zero placeholder when the upstream sent none
        return data

    async def chat_stream(self, deployment: Deployment, body: Json) -> AsyncIterator[Json]:
        lib = self._lib()
        kwargs = self._kwargs(deployment, body)
        kwargs["stream_options"] = {"include_usage": True}
        try:
            stream = await lib.acompletion(**kwargs, stream=True)
            finished = False
            async for chunk in stream:
                data: Json = chunk.model_dump(exclude_none=True)
                data.pop("_hidden_params", None)
                for choice in data.get("choices") or ():
                    if choice.get("finish_reason"):
                        finished = True
                yield data
        except UpstreamError:
            raise
        except Exception as exc:
            raise self._error(exc, deployment) from exc
        if not finished:
            raise UpstreamError(
                f"deployment {deployment.id!r} ended the stream before it finished",
                deployment=deployment.id,
                code="upstream_stream_cut",
            )

    async def embed(self, deployment: Deployment, body: Json) -> Json:
        lib = self._lib()
        kwargs = {k: v for k, v in self._kwargs(deployment, body).items() if k not in ("max_retries",)}
        try:
            response = await lib.aembedding(**kwargs)
        except Exception as exc:
            raise self._error(exc, deployment) from exc
        data: Json = response.model_dump(exclude_none=True)
        data.pop("_hidden_params", None)
        return data


_CONNECT_ERRORS = (httpx.ConnectError, aiohttp.ClientConnectorError, ConnectionRefusedError)
_TIMEOUT_ERRORS = (httpx.TimeoutException, aiohttp.ServerTimeoutError, TimeoutError)
_TRANSPORT_ERRORS = (httpx.TransportError, aiohttp.ClientError, ConnectionError)


def _transport_cause(exc: BaseException) -> BaseException | None:
    """The connection-level error in the chain under an exception (a connect error or timeout first)."""
    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in chain and len(chain) < 20:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    connect = [e for e in chain if isinstance(e, _CONNECT_ERRORS + _TIMEOUT_ERRORS)]
    transport = [e for e in chain if isinstance(e, _TRANSPORT_ERRORS)]
    return (connect or transport or [None])[0]


def create(services: object) -> LiteLLMAdapter:
    return LiteLLMAdapter()
