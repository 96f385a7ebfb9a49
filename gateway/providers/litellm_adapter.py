"""Adapter for providers that need translation (Anthropic, Bedrock, Vertex, Cohere, ...) through litellm.

litellm is imported on first use (the import costs seconds). Its retries are off: retries, fallbacks and
cooldowns are the router's job, so every provider behaves the same. Errors are mapped by litellm's
exception classes and status codes, never by message text.

litellm takes its own settings (api_base, api_key, extra_headers, callbacks, ...) as keyword arguments beside
the request's, so only allowed request parameters (providers/params.py) and the deployment's checked
fields become arguments, and nothing litellm would read as its own. Its HTTP clients follow redirects with
the provider's key header, so the clients it is given here do not follow them and refuse any host the
operator has not allowed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import httpx

from gateway.egress import CLOUD_IDENTITY_PROVIDERS, Egress
from gateway.egress.params import Kind
from gateway.errors import EgressDenied, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from gateway.monitoring import tracing
from gateway.providers.answers import check_chat, check_chunk, check_embeddings
from gateway.providers.base import AdapterServices, Json, api_key_for, check_deployment
from gateway.providers.deployment import Deployment
from gateway.providers.openai_compat import status_error

# Request fields the adapter sets itself, and OpenAI's `metadata`: litellm's own `metadata` argument is
# internal (logging, routing, cost), so a caller's is not handed to it.
_NOT_PASSED = frozenset({"model", "stream", "stream_options", "metadata"})
# Providers litellm calls through its own HTTP handler, which takes the guarded client (checked: it is
# used, and a redirect is not followed). Others go through the OpenAI SDK, guarded by `aclient_session`.
_HANDLER_PROVIDERS = frozenset(
    {
        "anthropic", "gemini", "mistral", "groq", "deepseek", "openrouter", "together_ai",
        "fireworks_ai", "xai", "ollama", "ollama_chat", "hosted_vllm",
    }
)  # fmt: skip


NO_KEY = "none"  # what a deployment without api_key_env authenticates with: nothing of the gateway's


class LiteLLMAdapter:
    name = "litellm"

    def __init__(self, egress: Egress | None = None) -> None:
        self._litellm: Any = None
        self._egress = egress or Egress()
        self._owned: Any = None  # litellm's test for its own keyword arguments
        self._handler: Any = None  # litellm's HTTP handler, guarded (for _HANDLER_PROVIDERS)

    def _lib(self) -> Any:
        if self._litellm is None:
            import litellm
            from litellm.llms.custom_httpx.http_handler import AsyncHTTPHandler
            from litellm.types import utils as litellm_types

            litellm.telemetry = False
            litellm.suppress_debug_info = True
            litellm.drop_params = True
            hooks: dict[str, list[Callable[..., object]]] = {"request": [self._guard]}
            # litellm's one process-wide client for OpenAI-SDK providers (openai, azure, ...): one gateway
            # per process, so one set of egress rules.
            litellm.aclient_session = httpx.AsyncClient(follow_redirects=False, event_hooks=hooks)
            self._handler = AsyncHTTPHandler(follow_redirects=False, event_hooks=hooks)
            owned = getattr(litellm_types, "is_litellm_owned_kwarg", None)
            self._owned = owned or frozenset(getattr(litellm_types, "all_litellm_params", ())).__contains__
            self._litellm = litellm
        return self._litellm

    async def _guard(self, request: httpx.Request) -> None:
        """Every request litellm sends through the clients given to it (redirects included): the host must
        be on the operator's list, whatever litellm derived it from."""
        problem = self._egress.url_problem(str(request.url))
        if problem:
            raise EgressDenied(f"litellm was about to call {request.url.host}: {problem}")

    async def close(self) -> None:
        if self._litellm is None:
            return
        if self._litellm.aclient_session is not None:
            await self._litellm.aclient_session.aclose()
            self._litellm.aclient_session = None
        await self._handler.close()

    def _kwargs(self, deployment: Deployment, body: Json, kind: Kind) -> dict[str, Any]:
        self._egress.params.check(body, kind)  # 400 naming the field, before anything else
        check_deployment(self._egress, deployment, kind)
        kwargs: dict[str, Any] = {k: v for k, v in body.items() if k not in _NOT_PASSED}
        kwargs.update(deployment.params)
        self._refuse_litellm_arguments(deployment, kwargs)
        kwargs["model"] = deployment.model
        kwargs["timeout"] = deployment.timeout_s
        kwargs["num_retries"] = 0
        kwargs["max_retries"] = 0
        if deployment.api_base:
            kwargs["api_base"] = deployment.api_base
        key = api_key_for(deployment, self._egress)
        if key:
            kwargs["api_key"] = key
        elif deployment.provider not in CLOUD_IDENTITY_PROVIDERS:
            # Credentials come only from api_key_env. Without a key litellm reads one from the environment
            # on its own (ANTHROPIC_AUTH_TOKEN, HF_TOKEN, TOGETHER_AI_TOKEN, AWS_BEARER_TOKEN_BEDROCK, ...,
            # none of them on the operator's list), so it always gets one: this placeholder, which also
            # satisfies clients that insist on a key (openai) for upstreams that need none. Cloud-identity
            # providers go only to their own hosts without api_key_env (gateway/egress).
            kwargs["api_key"] = NO_KEY
        if deployment.headers:
            kwargs["extra_headers"] = dict(deployment.headers)
        if tracing.ON:  # the current attempt's traceparent
            tracing.inject(kwargs.setdefault("extra_headers", {}))
        return kwargs

    def _refuse_litellm_arguments(self, deployment: Deployment, kwargs: dict[str, Any]) -> None:
        """The last line: an allowed name (say, one an operator added) that litellm takes as its own."""
        self._lib()
        owned = sorted(k for k in kwargs if self._owned(k))
        if owned:
            raise EgressDenied(
                f"deployment {deployment.id!r} ({deployment.model}) was not called: {owned[0]} is one of"
                " litellm's own arguments, never a request parameter; remove it from egress.request_params"
                " in config/gateway.yaml",
                deployment=deployment.id,
            )

    def _chat_kwargs(self, deployment: Deployment, body: Json) -> dict[str, Any]:
        kwargs = self._kwargs(deployment, body, "chat")
        if deployment.provider in _HANDLER_PROVIDERS:
            kwargs["client"] = self._handler
        return kwargs

    def _error(self, exc: Exception, deployment: Deployment) -> UpstreamError:
        lib = self._lib()
        where = f"deployment {deployment.id!r} ({deployment.model})"
        denied = _egress_cause(exc)
        if denied is not None:  # the guard stopped a request litellm was about to send
            return EgressDenied(f"{where} was not called: {denied.message}", deployment=deployment.id)
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
        kwargs = self._chat_kwargs(deployment, body)
        try:
            response = await lib.acompletion(**kwargs, stream=False)
        except UpstreamError:
            raise
        except Exception as exc:
            raise self._error(exc, deployment) from exc
        data: Json = response.model_dump(exclude_none=True)
        data.pop("_hidden_params", None)
        if not (data.get("usage") or {}).get("total_tokens"):
            data.pop("usage", None)  # litellm's all-zero placeholder when the upstream sent none
        return check_chat(data, deployment)

    async def chat_stream(self, deployment: Deployment, body: Json) -> AsyncIterator[Json]:
        lib = self._lib()
        kwargs = self._chat_kwargs(deployment, body)
        kwargs["stream_options"] = {"include_usage": True}
        try:
            stream = await lib.acompletion(**kwargs, stream=True)
            finished = False
            async for chunk in stream:
                data: Json = chunk.model_dump(exclude_none=True)
                data.pop("_hidden_params", None)
                for choice in check_chunk(data, deployment).get("choices") or ():
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
        kwargs = {
            k: v for k, v in self._kwargs(deployment, body, "embedding").items() if k not in ("max_retries",)
        }
        try:
            response = await lib.aembedding(**kwargs)
        except UpstreamError:
            raise
        except Exception as exc:
            raise self._error(exc, deployment) from exc
        data: Json = response.model_dump(exclude_none=True)
        data.pop("_hidden_params", None)
        return check_embeddings(data, deployment)


_CONNECT_ERRORS = (httpx.ConnectError, aiohttp.ClientConnectorError, ConnectionRefusedError)
_TIMEOUT_ERRORS = (httpx.TimeoutException, aiohttp.ServerTimeoutError, TimeoutError)
_TRANSPORT_ERRORS = (httpx.TransportError, aiohttp.ClientError, ConnectionError)


def _egress_cause(exc: BaseException) -> EgressDenied | None:
    """The guard's refusal, wherever litellm wrapped it."""
    cur: BaseException | None = exc
    for _ in range(20):
        if cur is None:
            return None
        if isinstance(cur, EgressDenied):
            return cur
        cur = cur.__cause__ or cur.__context__
    return None


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


def create(services: AdapterServices) -> LiteLLMAdapter:
    return LiteLLMAdapter(services.egress)
