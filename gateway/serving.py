"""The request flow behind the OpenAI-compatible endpoints, free of HTTP details.

auth -> resolve artifacts -> (policies) -> route -> adapter -> usage and cost -> request log.
Every request, failed or not, ends in exactly one `finish()` call, which writes one log row.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import orjson

from gateway.catalog import Catalog
from gateway.db.state import utcnow
from gateway.errors import (
    AuthenticationFailed,
    InvalidFields,
    InvalidRequest,
    ModelNotFound,
    NotFound,
    OpsgateError,
    PermissionDenied,
    UpstreamError,
)
from gateway.keys import Principal
from gateway.monitoring.metrics import Metrics
from gateway.monitoring.requestlog import LogRow, RequestLogWriter
from gateway.policy.pipeline import Pipeline
from gateway.providers.base import Json
from gateway.registry.refs import Ref, parse_ref
from gateway.registry.render import render_messages
from gateway.registry.specs import Deployment, PromptSpec
from gateway.registry.store import VersionRecord
from gateway.routing.router import Router, RouteResult
from gateway.usage import Prices, cost_usd, count_message_tokens, count_text_tokens, message_text, prices_for
from gateway.wire import ChatRequest, upstream_body


@dataclass(slots=True)
class Call:
    """One request on its way through the gateway: what the log row will say."""

    request_id: str
    route: str
    started: float = field(default_factory=time.perf_counter)
    ts: datetime = field(default_factory=utcnow)
    principal: Principal | None = None
    model: str | None = None
    artifacts: list[str] = field(default_factory=list)
    stream: bool = False
    route_result: RouteResult | None = None
    upstream_ms: float | None = None
    ttft_ms: float | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost: float | None = None
    decisions: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    citations: list[dict[str, Any]] | None = None  # RAG answers: the retrieved chunks, for the body
    policy: Any = None  # gateway.policy's state between its hooks (never logged)
    finished: bool = False

    @property
    def versions_header(self) -> str:
        return ",".join(self.artifacts)


def _prices(deployment: Deployment) -> Prices | None:
    if deployment.input_cost_per_token is not None or deployment.output_cost_per_token is not None:
        return Prices(deployment.input_cost_per_token or 0.0, deployment.output_cost_per_token or 0.0)
    return prices_for(deployment.model)


@dataclass(slots=True)
class ChatPlan:
    router: Router
    body: Json
    prompt: VersionRecord | None = None


class Retriever(Protocol):
    """Fetches context for a RAG prompt (implemented in gateway.retrieval); records lineage on the call."""

    async def retrieve(
        self, call: Call, spec: PromptSpec, variables: dict[str, Any], messages: list[Any]
    ) -> list[dict[str, Any]]: ...


def citations(context: list[dict[str, Any]], *, include_text: bool) -> list[dict[str, Any]]:
    """The `citations` of a RAG answer; chunk text only when the caller opted in (`include_context`)."""
    keys = ("document_id", "chunk_id", "source", "score", "index") + (("text",) if include_text else ())
    return [{k: c.get("id") if k == "chunk_id" else c.get(k) for k in keys} for c in context]


def _include_context(data: Json) -> bool:
    options = data.get("opsgate")
    return isinstance(options, dict) and options.get("include_context") is True


def prompt_params(spec: PromptSpec) -> Json:
    params = spec.params.model_dump(exclude_none=True, exclude={"extra_body"})
    return {**spec.params.extra_body, **params}


class Gateway:
    def __init__(
        self,
        catalog: Catalog,
        writer: RequestLogWriter,
        metrics: Metrics,
        retriever: Retriever | None = None,
        policy: Pipeline | None = None,
    ) -> None:
        self.catalog = catalog
        self.writer = writer
        self.metrics = metrics
        self.retriever = retriever
        self.policy = policy if policy is not None else Pipeline.ungoverned()
        # Called with (call, row) after every request's log row is submitted (e.g. online eval sampling).
        # Hooks must be quick and must not raise: they run on the request path.
        self.finish_hooks: list[Callable[[Call, LogRow], None]] = []

    # -- auth and resolution -------------------------------------------------------------------------

    def authenticate(self, call: Call, authorization: str | None) -> Principal:
        if not authorization:
            raise AuthenticationFailed(
                "no API key: send it as 'Authorization: Bearer <key>' (create one with `opsgate keys create`)"
            )
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationFailed("the Authorization header must be 'Bearer <key>'")
        principal = self.catalog.principal(token.strip())
        if principal is None:
            raise AuthenticationFailed("invalid API key: it is unknown or was revoked")
        call.principal = principal
        return principal

    def resolve_router(self, call: Call, model: str, kind: str) -> Router:
        """A router named by the request's model: `name`, `router:name`, with optional @version/@alias."""
        call.model = model
        try:
            ref = parse_ref(model, param="model")
        except InvalidRequest:
            ref = Ref(None, "")  # not even a name: unknown
        if ref.kind not in (None, "router") or not self.catalog.has("router", ref.name):
            raise ModelNotFound(
                f"the model {model!r} does not exist; GET /v1/models lists what this key may call",
                param="model",
            )
        return self._router(call, ref.name, ref.selector, kind)

    def _router(
        self, call: Call, name: str, selector: str | None, kind: str, *, check_access: bool = True
    ) -> Router:
        """`check_access` is off for a prompt's own router: a key allowed the prompt may use what it runs on."""
        router = self.catalog.router_for(self.catalog.resolve("router", name, selector))
        assert call.principal is not None
        if check_access and not call.principal.may_call("router", router.name):
            raise PermissionDenied(
                f"this key may not call router:{router.name} (its allow list does not include it)",
                param="model",
            )
        if router.spec.kind != kind:
            raise InvalidRequest(
                f"router {router.name!r} serves {router.spec.kind} requests, not {kind}",
                param="model",
                code="wrong_model_kind",
            )
        call.artifacts.append(router.ref)
        return router

    async def plan_chat(self, call: Call, data: Json, req: ChatRequest) -> ChatPlan:
        """Resolve what the request names (a router, or a prompt and its router) and build the upstream body."""
        call.model = req.model
        prompt_ref = self._prompt_ref(req)
        if prompt_ref is None:
            if not req.messages:
                raise InvalidFields(
                    "messages: this field is required (at least one message)", param="messages"
                )
            router = self.resolve_router(call, req.model, "chat")
            return ChatPlan(router, upstream_body(data))
        record = self.catalog.resolve("prompt", prompt_ref.name, prompt_ref.selector)
        assert call.principal is not None
        if not call.principal.may_call("prompt", record.name):
            raise PermissionDenied(
                f"this key may not call prompt:{record.name} (its allow list does not include it)",
                param="model",
            )
        call.artifacts.append(record.ref)
        spec = self.catalog.prompt_spec(record)
        variables = req.prompt_variables or {}
        context: list[dict[str, Any]] = []
        if spec.retrieval is not None:
            if self.retriever is None:
                raise InvalidRequest(
                    f"prompt {spec.name!r} needs retrieval, which this gateway was built without",
                    code="retrieval_unavailable",
                )
            # the query is built from a redacted copy: an index may embed it through a remote router
            query_messages, query_variables = self.policy.screen_query(
                call, spec, data.get("messages") or [], variables
            )
            context = await self.retriever.retrieve(call, spec, query_variables, query_messages)
            context = self.policy.screen_context(call, spec, context)  # PII and injection in chunks
            call.citations = citations(context, include_text=_include_context(data))
        rendered = render_messages(spec, variables, templates=record.files, context=context)
        router_ref = parse_ref(spec.router, default_kind="router")
        router = self._router(call, router_ref.name, router_ref.selector, "chat", check_access=False)
        body = {**prompt_params(spec), **upstream_body(data)}
        body["messages"] = rendered + list(data.get("messages") or [])
        if spec.response_format is not None and "response_format" not in data:
            body["response_format"] = spec.response_format
        return ChatPlan(router, body, record)

    def _prompt_ref(self, req: ChatRequest) -> Ref | None:
        """`prompt:x[@sel]`, a bare name that is a prompt, or LiteLLM's prompt_id (+ prompt_version)."""
        if req.prompt_id:
            selector = str(req.prompt_version) if req.prompt_version is not None else None
            ref = parse_ref(req.prompt_id, default_kind="prompt", param="prompt_id")
            return Ref("prompt", ref.name, selector or ref.selector)
        try:
            ref = parse_ref(req.model, param="model")
        except InvalidRequest:
            return None  # not a reference at all: resolve_router answers 404
        if ref.kind == "prompt":
            return ref
        if (
            ref.kind is None
            and not self.catalog.has("router", ref.name)
            and self.catalog.has("prompt", ref.name)
        ):
            return Ref("prompt", ref.name, ref.selector)
        return None

    def models(self, principal: Principal) -> list[Json]:
        out: list[Json] = []
        for name in self.catalog.names("router"):
            router = self.catalog.router(name)
            if router is not None and principal.may_call("router", name):
                out.append(model_card(router))
        for name in self.catalog.names("prompt"):
            if not principal.may_call("prompt", name):
                continue
            try:
                record = self.catalog.resolve("prompt", name)
            except NotFound:
                continue
            out.append(prompt_card(record, self.catalog.prompt_spec(record)))
        return out

    def model(self, principal: Principal, model_id: str) -> Json:
        for card in self.models(principal):
            if model_id in (card["id"], f"{card['opsgate']['kind']}:{card['id']}"):
                return card
        raise ModelNotFound(f"the model {model_id!r} does not exist", param="model")

    # -- calls ---------------------------------------------------------------------------------------

    async def chat(self, call: Call, router: Router, body: Json, messages: list[Any]) -> Json:
        started = time.perf_counter()
        call.route_result = RouteResult(router.spec.deployments[0])  # the log sees failed attempts too
        try:
            data, result = await router.chat(body, call.route_result)
        finally:
            call.upstream_ms = (time.perf_counter() - started) * 1000
        if call.citations is not None:
            data["citations"] = call.citations
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else None
        text = "".join(
            message_text(c.get("message")) for c in data.get("choices") or () if isinstance(c, dict)
        )
        self._account(call, result.deployment, usage, messages, text)
        self.policy.check_chat_output(call, data)
        return data

    async def embed(self, call: Call, router: Router, body: Json) -> Json:
        started = time.perf_counter()
        call.route_result = RouteResult(router.spec.deployments[0])
        try:
            data, result = await router.embed(body, call.route_result)
        finally:
            call.upstream_ms = (time.perf_counter() - started) * 1000
        raw_usage = data.get("usage")
        usage: dict[str, Any] = raw_usage if isinstance(raw_usage, dict) else {}
        call.tokens_in = int(usage.get("prompt_tokens") or 0)
        call.tokens_out = 0
        call.cost = cost_usd(_prices(result.deployment), call.tokens_in, 0)
        return data

    async def open_stream(self, call: Call, router: Router, body: Json) -> tuple[Json, AsyncIterator[Json]]:
        started = time.perf_counter()
        call.route_result = RouteResult(router.spec.deployments[0])
        try:
            first, rest, _ = await router.open_stream(body, call.route_result)
        finally:
            call.upstream_ms = (time.perf_counter() - started) * 1000
        call.ttft_ms = call.upstream_ms
        call.extra["upstream_started"] = started
        return await self.policy.wrap_stream(call, first, rest)

    async def stream_sse(
        self, call: Call, first: Json, rest: AsyncIterator[Json], messages: list[Any], include_usage: bool
    ) -> AsyncGenerator[bytes]:
        """SSE bytes for the client; ends with [DONE], or with an error event and no [DONE] mid-stream."""
        started = call.extra.pop("upstream_started", time.perf_counter())
        pieces: list[str] = []
        usage: dict[str, Any] | None = None
        last_meta: Json = first
        status: int = 200
        error: OpsgateError | None = None
        if call.citations is not None:
            first = {**first, "citations": call.citations}
        # Events the upstream delivered together go out in one write; flushed before waiting for more.
        out: list[bytes] = []
        ready = getattr(rest, "ready", None)
        try:
            chunk: Json | None = first
            while chunk is not None:
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or ():
                    delta = choice.get("delta") or {}
                    if isinstance(delta.get("content"), str):
                        pieces.append(delta["content"])
                last_meta = chunk
                if include_usage or chunk.get("choices"):
                    if not include_usage and "usage" in chunk:
                        chunk = {k: v for k, v in chunk.items() if k != "usage"}
                    out.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
                if out and not (ready is not None and ready()):
                    yield b"".join(out)
                    out.clear()
                chunk = await anext(rest, None)
            if include_usage and usage is None:
                usage = self._usage_from_text(call, messages, "".join(pieces))
                out.append(b"data: " + orjson.dumps(_usage_chunk(last_meta, usage)) + b"\n\n")
            yield b"".join([*out, b"data: [DONE]\n\n"])
        except UpstreamError as exc:
            status, error = exc.status, exc
            yield b"data: " + orjson.dumps(_finish_chunk(last_meta, "error")) + b"\n\n"
            yield b"data: " + orjson.dumps(exc.to_openai()) + b"\n\n"
        except BaseException as exc:  # client went away (cancelled) or a bug: still log the row
            status, error = (
                499,
                OpsgateError(f"stream ended early: {type(exc).__name__}", code="client_closed"),
            )
            raise
        finally:
            await _aclose(rest)
            call.upstream_ms = (time.perf_counter() - started) * 1000
            assert call.route_result is not None
            self._account(call, call.route_result.deployment, usage, messages, "".join(pieces))
            self.finish(call, status, error)

    async def abandon_stream(self, call: Call, rest: AsyncIterator[Json]) -> None:
        """The client left before the stream's first byte was sent: close the upstream, log the request."""
        if call.finished:
            return
        await _aclose(rest)
        call.extra.pop("upstream_started", None)
        self.finish(
            call, 499, OpsgateError("the client left before the stream started", code="client_closed")
        )

    # -- accounting and the log row ----------------------------------------------------------------------

    def _usage_from_text(self, call: Call, messages: list[Any], text: str) -> dict[str, int]:
        model = call.route_result.deployment.model if call.route_result else ""
        prompt = count_message_tokens(messages, model)
        completion = count_text_tokens(text, model)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _account(
        self, call: Call, deployment: Deployment, usage: dict[str, Any] | None, messages: list[Any], text: str
    ) -> None:
        if not usage or "prompt_tokens" not in usage:
            usage = self._usage_from_text(call, messages, text)
        call.tokens_in = int(usage.get("prompt_tokens") or 0)
        call.tokens_out = int(usage.get("completion_tokens") or 0)
        call.cost = cost_usd(_prices(deployment), call.tokens_in, call.tokens_out)

    def finish(self, call: Call, status: int, error: OpsgateError | None = None) -> None:
        if call.finished:
            return
        call.finished = True
        self.policy.settle(call)  # true tokens and cost replace the estimates; stream decisions recorded
        result = call.route_result
        row = LogRow(
            id=call.request_id,
            ts=call.ts,
            route=call.route,
            status=status,
            latency_ms=(time.perf_counter() - call.started) * 1000,
            key_id=call.principal.key_id if call.principal else None,
            principal=call.principal.principal if call.principal else None,
            model=call.model,
            artifacts=list(call.artifacts),
            upstream_model=result.deployment.model if result and result.attempts else None,
            deployment=result.deployment.id if result and result.attempts else None,
            error_type=(error.code or error.type) if error else None,
            error_message=error.message[:2000] if error else None,
            stream=call.stream,
            upstream_ms=call.upstream_ms,
            ttft_ms=call.ttft_ms,
            tokens_in=call.tokens_in,
            tokens_out=call.tokens_out,
            cost_usd=call.cost,
            attempts=[a.as_dict() for a in result.attempts] if result else [],
            decisions=call.decisions,
            extra=call.extra,
        )
        self.writer.submit(row)
        self.metrics.observe(row)
        for hook in self.finish_hooks:
            hook(call, row)


def model_card(router: Router) -> Json:
    providers = sorted({d.provider for d in router.spec.deployments})
    local = providers == ["local"]
    return {
        "id": router.name,
        "object": "model",
        "created": 0,
        "owned_by": "opsgate-local" if local else "opsgate",
        "opsgate": {
            "kind": "router",
            "serves": router.spec.kind,
            "version": router.version,
            "hash": router.content_hash,
            "ref": router.ref,
            "providers": providers,
            "local": local,
            "description": router.spec.description
            or ("the embedded local provider (no network, no key)" if local else ""),
            "deployments": [{"id": d.id, "model": d.model} for d in router.spec.deployments],
        },
    }


def _finish_chunk(meta: Json, reason: str) -> Json:
    return {
        "id": meta.get("id", ""),
        "object": "chat.completion.chunk",
        "created": meta.get("created", int(time.time())),
        "model": meta.get("model", ""),
        "choices": [{"index": 0, "delta": {}, "finish_reason": reason}],
    }


def _usage_chunk(meta: Json, usage: dict[str, Any]) -> Json:
    return {
        "id": meta.get("id", ""),
        "object": "chat.completion.chunk",
        "created": meta.get("created", int(time.time())),
        "model": meta.get("model", ""),
        "choices": [],
        "usage": usage,
    }


async def _aclose(stream: AsyncIterator[Json]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


def prompt_card(record: VersionRecord, spec: PromptSpec) -> Json:
    return {
        "id": record.name,
        "object": "model",
        "created": int(record.created_at.timestamp()),
        "owned_by": spec.owner or "opsgate",
        "opsgate": {
            "kind": "prompt",
            "version": record.version,
            "hash": record.content_hash,
            "ref": record.ref,
            "router": spec.router,
            "description": spec.description,
            "variables": spec.variables,
            "retrieval": spec.retrieval.model_dump(exclude_none=True) if spec.retrieval else None,
            "tags": spec.tags,
        },
    }
