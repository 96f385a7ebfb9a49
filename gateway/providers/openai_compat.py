"""Direct adapter for OpenAI-compatible upstreams (OpenAI, vLLM, Ollama's /v1, most hosted APIs).

One pooled aiohttp session, bodies sent with orjson. This is the hot path: going through
`litellm.acompletion` costs 3-5 ms of CPU per call here, several times a whole gateway request.
Before anything is sent, the deployment is checked against the operator's egress rules and the body
against the request-parameter allow-list; redirects are never followed (a redirect could carry the key
to a host nobody allowed).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import aiohttp
import orjson

from gateway.egress import Egress
from gateway.egress.params import Kind
from gateway.errors import (
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.monitoring import tracing
from gateway.providers.answers import check_chat, check_chunk, check_embeddings, check_responses
from gateway.providers.base import AdapterServices, Json, api_key_for, check_deployment, upstream_message
from gateway.providers.deployment import Deployment
from gateway.surfaces.responses import native_chat

DEFAULT_BASES = {"openai": "https://api.openai.com/v1"}
RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def status_error(status: int, body: Any, deployment: Deployment, retry_after: float | None) -> UpstreamError:
    """Map an upstream HTTP error to ours: who is at fault decides the status and whether to fall back."""
    msg = upstream_message(body, f"HTTP {status}")
    where = f"deployment {deployment.id!r} ({deployment.model})"
    if 300 <= status < 400:
        return UpstreamError(
            f"{where} answered with a redirect (HTTP {status}), which opsgate does not follow: set its"
            " api_base to the final address (on egress.hosts in config/gateway.yaml)",
            upstream_status=status,
            deployment=deployment.id,
            code="upstream_redirect",
        )
    if status == 429:
        return UpstreamRateLimited(
            f"{where} is rate limited: {msg}",
            upstream_status=status,
            retry_after_s=retry_after,
            deployment=deployment.id,
        )
    if status in (401, 403):
        return UpstreamError(
            f"{where} refused the gateway's credentials (HTTP {status}): {msg}; check its api_key_env",
            upstream_status=status,
            deployment=deployment.id,
            code="upstream_auth_failed",
        )
    if status in RETRYABLE_STATUS or status >= 500:
        return UpstreamError(
            f"{where} failed with HTTP {status}: {msg}", upstream_status=status, deployment=deployment.id
        )
    return UpstreamRejected(
        f"{where} rejected the request (HTTP {status}): {msg}",
        retryable=False,
        upstream_status=status,
        deployment=deployment.id,
    )


def transport_error(exc: BaseException, deployment: Deployment) -> UpstreamError:
    where = f"deployment {deployment.id!r} ({deployment.model})"
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return UpstreamTimeout(
            f"{where} did not answer within {deployment.timeout_s:g} s", deployment=deployment.id
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamUnavailable(
            f"{where} could not be reached: {exc.os_error or exc}", deployment=deployment.id
        )
    return UpstreamError(
        f"{where} broke the connection: {type(exc).__name__}: {exc}", deployment=deployment.id
    )


class OpenAICompatAdapter:
    name = "openai"

    def __init__(self, egress: Egress | None = None) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._egress = egress or Egress()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=0, limit_per_host=0, ttl_dns_cache=300, keepalive_timeout=30
            )
            self._session = aiohttp.ClientSession(
                connector=connector, json_serialize=lambda o: orjson.dumps(o).decode(), auto_decompress=True
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _request(self, deployment: Deployment, path: str, kind: Kind) -> tuple[str, dict[str, str]]:
        check_deployment(self._egress, deployment, kind)  # before the key is read or a byte is sent
        base = deployment.api_base or DEFAULT_BASES.get(deployment.provider)
        if base is None:
            raise UpstreamError(
                f"deployment {deployment.id!r} has no api_base", retryable=False, deployment=deployment.id
            )
        headers = {**deployment.headers, "Content-Type": "application/json"}
        key = api_key_for(deployment, self._egress)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        tracing.inject(headers)  # the current attempt's traceparent, when tracing is on
        return base.rstrip("/") + path, headers

    def _payload(self, deployment: Deployment, body: Json, kind: Kind) -> Json:
        """The body sent upstream: allowed parameters only (400 naming the first other), then the
        deployment's own params, then what the adapter decides."""
        self._egress.params.check(body, kind)
        return {**body, **deployment.params, "model": deployment.model_name}

    async def _post_json(self, deployment: Deployment, path: str, payload: Json, kind: Kind) -> Json:
        url, headers = self._request(deployment, path, kind)
        timeout = aiohttp.ClientTimeout(total=deployment.timeout_s)
        try:
            async with self._client().post(
                url, data=orjson.dumps(payload), headers=headers, timeout=timeout, allow_redirects=False
            ) as resp:
                raw = await resp.read()
                if resp.status >= 300:
                    raise status_error(
                        resp.status, _loads_or_text(raw), deployment, _retry_after(resp.headers)
                    )
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise transport_error(exc, deployment) from exc
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(
                f"deployment {deployment.id!r} answered with invalid JSON", deployment=deployment.id
            ) from exc
        if not isinstance(data, dict):
            raise UpstreamError(
                f"deployment {deployment.id!r} answered with a non-object", deployment=deployment.id
            )
        return data

    async def chat(self, deployment: Deployment, body: Json) -> Json:
        payload = {**self._payload(deployment, body, "chat"), "stream": False}
        payload.pop("stream_options", None)
        return check_chat(await self._post_json(deployment, "/chat/completions", payload, "chat"), deployment)

    async def responses(self, deployment: Deployment, body: Json) -> Json:
        """A Responses API call passed to the deployment's own `/responses` (`responses: native`): the
        caller's body (checked by the Responses bridge and, as chat, by the allow-list), the deployment's
        params and model, never stored upstream (the gateway is the store). Answered chat-shaped for the
        flow (usage, output checks), the upstream's response object under `native_response`."""
        self._egress.params.check_responses(body)  # the last line, as `_payload` for chat
        payload = {
            **body,
            **deployment.params,
            "model": deployment.model_name,
            "store": False,
            "stream": False,
        }
        data = await self._post_json(deployment, "/responses", payload, "chat")
        return native_chat(check_responses(data, deployment))

    async def embed(self, deployment: Deployment, body: Json) -> Json:
        payload = self._payload(deployment, body, "embedding")
        return check_embeddings(
            await self._post_json(deployment, "/embeddings", payload, "embedding"), deployment
        )

    def chat_stream(self, deployment: Deployment, body: Json) -> ChunkStream:
        return ChunkStream(self._stream_batches(deployment, body))

    async def _stream_batches(
        self, deployment: Deployment, body: Json
    ) -> AsyncGenerator[tuple[list[Json], bool], None]:
        payload = self._payload(deployment, body, "chat")
        url, headers = self._request(deployment, "/chat/completions", "chat")
        headers["Accept"] = "text/event-stream"
        options = dict(body.get("stream_options") or {})
        options["include_usage"] = True  # always: the log needs usage even when the client did not ask
        payload.update(stream=True, stream_options=options)
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=deployment.timeout_s, sock_read=deployment.timeout_s
        )
        try:
            async with self._client().post(
                url, data=orjson.dumps(payload), headers=headers, timeout=timeout, allow_redirects=False
            ) as resp:
                if resp.status >= 300:
                    raw = await resp.read()
                    raise status_error(
                        resp.status, _loads_or_text(raw), deployment, _retry_after(resp.headers)
                    )
                async for batch in _sse_batches(resp, deployment):
                    yield batch
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise transport_error(exc, deployment) from exc


class ChunkStream:
    """The chunks of one upstream stream, parsed a network read at a time.

    `ready()` says whether the next step (a chunk, or the end) is already parsed, so the caller can
    write what the upstream sent together to its client in one go and flush only before it must wait."""

    def __init__(self, batches: AsyncGenerator[tuple[list[Json], bool], None]) -> None:
        self._batches = batches
        self._ready: deque[Json] = deque()
        self._ended = False  # the upstream's [DONE] was parsed: the end needs no more reads

    def __aiter__(self) -> ChunkStream:
        return self

    async def __anext__(self) -> Json:
        while not self._ready:
            if self._ended:
                raise StopAsyncIteration
            batch, self._ended = await anext(self._batches)
            self._ready.extend(batch)
        return self._ready.popleft()

    def ready(self) -> bool:
        return bool(self._ready) or self._ended

    async def aclose(self) -> None:
        self._ready.clear()
        await self._batches.aclose()


async def _sse_batches(
    resp: aiohttp.ClientResponse, deployment: Deployment
) -> AsyncIterator[tuple[list[Json], bool]]:
    """Parse an SSE body into JSON chunks, one list per network read (lines split on LF, as before),
    each with whether [DONE] ended it; a stream that ends without a finish or [DONE] is an error.
    Chunks parsed before a bad event are yielded before its error is raised."""
    data_lines: list[bytes] = []
    finished = False
    tail = b""
    eof = False
    reads = resp.content.iter_any()
    while not eof:
        try:
            received = await anext(reads)
        except StopAsyncIteration:
            eof = True
            received = b""
        lines = (tail + received).split(b"\n")
        tail = lines.pop()
        if eof and tail:
            lines.append(tail)  # a last line without its newline
        batch: list[Json] = []
        for raw_line in lines:
            line = raw_line.rstrip(b"\r\n")
            if line.startswith(b"data:"):
                data_lines.append(line[5:].lstrip(b" "))
                continue
            if line or not data_lines:
                continue  # comments, event:/id: fields, keep-alive blank lines
            data = b"\n".join(data_lines)
            data_lines = []
            if data == b"[DONE]":
                yield batch, True
                return
            try:
                chunk = _parse_chunk(data, deployment)
            except UpstreamError:
                if batch:
                    yield batch, False
                raise
            for choice in chunk.get("choices") or ():
                if choice.get("finish_reason"):
                    finished = True
            batch.append(chunk)
        if batch:
            yield batch, False
    if data_lines:  # a last event without its blank line
        data = b"\n".join(data_lines)
        if data == b"[DONE]":
            return
        chunk = _parse_chunk(data, deployment)
        finished = finished or any(c.get("finish_reason") for c in chunk.get("choices") or ())
        yield [chunk], False
    if not finished:
        raise UpstreamError(
            f"deployment {deployment.id!r} ended the stream before it finished",
            deployment=deployment.id,
            code="upstream_stream_cut",
        )


def _parse_chunk(data: bytes, deployment: Deployment) -> Json:
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError(
            f"deployment {deployment.id!r} sent a malformed stream event", deployment=deployment.id
        ) from exc
    if not isinstance(chunk, dict):
        raise UpstreamError(
            f"deployment {deployment.id!r} sent a malformed stream event", deployment=deployment.id
        )
    if chunk.get("error"):
        raise UpstreamError(
            f"deployment {deployment.id!r} failed mid-stream: {upstream_message(chunk, 'error event')}",
            deployment=deployment.id,
        )
    return check_chunk(chunk, deployment)


def _loads_or_text(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw[:500].decode("utf-8", "replace")


def create(services: AdapterServices) -> OpenAICompatAdapter:
    return OpenAICompatAdapter(services.egress)
