"""The request flow behind the OpenAI-compatible endpoints, free of HTTP details.

    resolve ─► authorise ─► prepare ─► call ─► finish
    (memory:   (access,     (retrieve,  (route,   (output checks; settle, the log row,
     versions,  query        screen,     adapter,  the online-eval sample)
     lineage,   screen,      render,     stream)
     variables) early        count,
                limits)      charge)

`Gateway.chat` reads as the whole chat path. Every request, failed or not, ends in exactly one
`finish()`, which writes one log row: the HTTP layer opens each request with `gateway.api.deps.opened_call`,
which guarantees it (a stream hands that duty to its SSE writer).
"""

from __future__ import annotations

import asyncio
import copy
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from gateway.api_requests import ChatRequest, EmbeddingRequest
from gateway.errors import AuthenticationFailed, ModelNotFound, OpsgateError, PermissionDenied, UpstreamError
from gateway.flow.access import VersionAccess
from gateway.flow.call import Call
from gateway.flow.model_cards import model_card, prompt_card
from gateway.flow.plan import ChatPlan, Resolver
from gateway.flow.shadow import ShadowOrder, ShadowRunner
from gateway.flow.sse import CUT, ChatStream
from gateway.flow.traffic import CHAT, Recording, Surface, TrafficRecorder
from gateway.keys import Principal
from gateway.limits import LimitsConfig, check_embedding_input
from gateway.monitoring import tracing
from gateway.monitoring.metrics import Metrics
from gateway.monitoring.requestlog import LogRow, RequestLogWriter
from gateway.policy.base import Subject
from gateway.policy.payloads import chat_payload, embedding_payload
from gateway.policy.pipeline import Pipeline
from gateway.prompts.render import render_messages_async
from gateway.prompts.spec import PromptSpec
from gateway.providers.deployment import Deployment
from gateway.retrieval.retriever import IndexRetriever, last_user_message
from gateway.routing.router import Router, RouteResult
from gateway.shapes import Json
from gateway.snapshot import Catalog
from gateway.tokens_cost import (
    Prices,
    cost_usd,
    count_message_tokens,
    count_text_tokens,
    encoding_for,
    message_text,
    prices_for,
    token_count,
)

METRICS_ONLY = frozenset({"metrics"})
FinishHook = Callable[[Call, LogRow], None]


@dataclass(slots=True)
class Upstream:
    """A prepared request: the router to call and the body it gets."""

    router: Router
    body: Json
    # a bridged Responses call that may go to deployments serving /responses natively: its own body, and the
    # messages the chat body had before the policies (native only while they left them as they were)
    native: Json | None = None
    native_messages: Any = None

    @property
    def messages(self) -> list[Any]:
        messages: list[Any] = self.body.get("messages") or []
        return messages


class Gateway:
    def __init__(
        self,
        catalog: Catalog,
        writer: RequestLogWriter,
        metrics: Metrics,
        retriever: IndexRetriever | None = None,
        policy: Pipeline | None = None,
        *,
        protected_aliases: frozenset[str] = frozenset({"staging", "production"}),
        limits: LimitsConfig | None = None,
        traffic: TrafficRecorder | None = None,
        shadow_in_flight: int = 8,
    ) -> None:
        self.catalog = catalog
        self.limits = limits or LimitsConfig()
        self.writer = writer
        self.metrics = metrics
        self.retriever = retriever
        self.policy = policy if policy is not None else Pipeline.ungoverned()
        self.access = VersionAccess(catalog, protected_aliases)
        self.resolver = Resolver(catalog, retriever)
        self.traffic = traffic  # the traffic store's recorder (None: nothing is stored)
        # Called with (call, row) after every request's log row is submitted (e.g. online eval sampling).
        # Hooks must be quick and must not raise: they run on the request path.
        self.finish_hooks: list[FinishHook] = []
        self.streams: set[ChatStream] = set()  # open streams, cut at shutdown after the grace period
        self.calls: set[asyncio.Task[Any]] = set()  # plain calls being worked on (gateway.api.deps)
        self.cutting = False  # the shutdown grace period is over: what is still running is cut
        self.shadows = ShadowRunner(self.shadow_chat, max_in_flight=shadow_in_flight)

    def cut_in_flight(self) -> None:
        """At shutdown, once the grace period is over: streams end with their error event, and plain
        calls still waiting are stopped and answered 503 (gateway.api.deps.opened_call)."""
        self.cutting = True
        for stream in list(self.streams):
            stream.cut()
        for task in list(self.calls):
            task.cancel(msg=CUT)

    # -- who calls ---------------------------------------------------------------------------------------

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
        if principal.roles == METRICS_ONLY:
            raise PermissionDenied(
                "this key has only the metrics role: it may read /metrics and nothing else"
            )
        return principal

    # -- the chat path -----------------------------------------------------------------------------------

    async def chat(self, call: Call, request: ChatRequest, surface: Surface = CHAT) -> Json | ChatStream:
        """A chat completion, in the order of the request flow. The caller finishes the call (or the
        returned stream does, once it is over). `surface`: the API it was asked through (a bridged API's
        call is stored in that API's shape)."""
        call.stream, call.include_context = request.stream, request.include_context
        with tracing.span("opsgate.resolve"):
            plan = self.resolver.chat(call, request)
        with tracing.span("opsgate.authorise"):
            await self.authorise(call, plan)
        upstream = await self.prepare(call, plan, surface)
        recording = self.recording(call, plan, upstream, surface)
        if request.stream:
            return await self.open_stream(call, upstream, request, recording)
        data = await self.complete(call, upstream)
        if recording is not None:
            data["id"] = recording.id
            sent = upstream.native if call.route_result is not None and call.route_result.native else None
            await recording.save(sent or upstream.body, data)
        return data

    def recording(self, call: Call, plan: ChatPlan, upstream: Upstream, surface: Surface) -> Recording | None:
        """The call's recording in the traffic store, when it is to be stored. The gateway is the store:
        `store` is never sent upstream (a provider would keep a second copy, out of the operator's reach)."""
        prompt = plan.prompt.name if plan.prompt is not None else None
        if self.traffic is None or call.pin is not None:  # a shadow call's answer is never kept
            return None
        upstream.body.pop("store", None)
        if not self.traffic.wanted(plan.request.store, plan.router.name, prompt):
            return None
        return self.traffic.recording(call, surface, plan.request.body, plan.request.body.get("metadata"))

    async def authorise(self, call: Call, plan: ChatPlan) -> None:
        """Access (the key's allow list, approved versions, policy rules), the query screen, and (for a
        request that will retrieve) the limits that need no token count: all before any work is done."""
        self.access.authorise(call.principal, plan.asked)
        subject = Subject.of(call.principal, plan.targets, "chat")
        query = (plan.request.caller_messages(), plan.variables) if plan.index is not None else None
        with tracing.span("opsgate.policy.authorise"):
            plan.query_source = await self.policy.authorise(
                call, subject, query=query, early=query is not None
            )

    async def prepare(self, call: Call, plan: ChatPlan, surface: Surface = CHAT) -> Upstream:
        """Retrieve and screen the context, render the prompt, then admit the request as it will go
        upstream (content checks, token counts, every counted limit in one store round trip)."""
        request = plan.request
        self.catalog.adapters.params.check_request(request.body, "chat")  # before any work is done for it
        if plan.spec is None:
            upstream = Upstream(plan.router, request.forward())
            if surface.native is not None:
                upstream.native = dict(surface.native)
                upstream.native_messages = copy.deepcopy(upstream.body.get("messages"))
        else:
            with tracing.span("opsgate.retrieve"):
                context = await self._retrieve(call, plan) if plan.index is not None else []
            with tracing.span("opsgate.render"):
                upstream = Upstream(plan.router, await self._prompt_body(plan, context))
            if call.question is None:
                call.question = last_user_message(request.caller_messages())
        payload = chat_payload(plan.router, upstream.body, request.body, self.policy.tokens)
        with tracing.span("opsgate.policy.admit"):
            await self.policy.admit(call, payload)
        return upstream

    async def _retrieve(self, call: Call, plan: ChatPlan) -> list[Json]:
        assert self.retriever is not None and plan.spec is not None and plan.spec.retrieval is not None
        assert plan.index is not None and plan.query_source is not None
        messages, variables = plan.query_source
        query = await asyncio.to_thread(
            self.retriever.query, plan.spec, plan.spec.retrieval, variables, messages
        )
        call.question = query
        retrieval = await self.retriever.retrieve(plan.index, plan.spec.retrieval, query)
        call.retrieval = retrieval
        with tracing.span("opsgate.policy.screen_context"):
            context = self.policy.screen_context(call, retrieval.context())  # PII and injection in chunks
        retrieval.keep(context)
        return context

    async def _prompt_body(self, plan: ChatPlan, context: list[Json]) -> Json:
        assert plan.prompt is not None and plan.spec is not None
        spec, request = plan.spec, plan.request
        rendered = await render_messages_async(  # off the event loop, within limits.render
            spec, plan.variables, templates=plan.prompt.files, context=context, limits=self.limits.render
        )
        body = {**prompt_params(spec), **request.forward()}
        body["messages"] = rendered + request.caller_messages()
        if spec.response_format is not None and "response_format" not in request.body:
            body["response_format"] = spec.response_format
        return body

    @staticmethod
    def _native(call: Call, upstream: Upstream) -> Json | None:
        """The Responses body for native deployments, unless a policy changed the messages (a redaction
        must reach the upstream: the bridge carries it) or the call streams. A cap the policies set on
        the chat body (max_tokens) is carried over."""
        if (
            upstream.native is None
            or call.stream
            or upstream.body.get("messages") != upstream.native_messages
        ):
            return None
        native = upstream.native
        if "max_tokens" in upstream.body and native.get("max_output_tokens") is None:
            native["max_output_tokens"] = upstream.body["max_tokens"]
        return native

    async def complete(self, call: Call, upstream: Upstream) -> Json:
        """Call the upstream (routing, fallbacks), account for it and check the answer."""
        started = time.perf_counter()
        call.route_result = RouteResult(upstream.router.spec.deployments[0])  # the log sees failed tries
        try:
            data, result = await upstream.router.chat(
                upstream.body, call.route_result, native=self._native(call, upstream)
            )
        finally:
            call.upstream_ms = (time.perf_counter() - started) * 1000
        citations = call.citations()
        if citations is not None:
            data["citations"] = citations
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else None
        text = "".join(
            message_text(c.get("message")) for c in data.get("choices") or () if isinstance(c, dict)
        )
        if not usage or "prompt_tokens" not in usage:  # counted off the event loop: seconds for a long text
            usage = await asyncio.to_thread(self._usage_from_text, call, upstream.messages, text)
        self._account(call, result.deployment, usage, upstream.messages, text)
        with tracing.span("opsgate.policy.output"):
            self.policy.check_chat_output(call, data)
        call.answer = _answer_text(data)
        return data

    async def open_stream(
        self, call: Call, upstream: Upstream, request: ChatRequest, recording: Recording | None = None
    ) -> ChatStream:
        """Open the upstream stream (falling back until one yields its first chunk), put the output
        checks around it, and hand it to an SSE writer that finishes the call when the stream ends."""
        started = time.perf_counter()
        call.route_result = RouteResult(upstream.router.spec.deployments[0])
        try:
            first, rest, _ = await upstream.router.open_stream(upstream.body, call.route_result)
        finally:
            call.upstream_ms = (time.perf_counter() - started) * 1000
        call.ttft_ms = call.upstream_ms
        streaming = tracing.child(call, "opsgate.stream")
        first, rest = await self.policy.wrap_stream(call, first, rest)
        if recording is not None:
            first, rest = recording.wrap_stream(upstream.body, first, rest)
        messages = upstream.messages
        include_usage = bool(request.stream_options and request.stream_options.include_usage)

        def end(call: Call, status: int, error: OpsgateError | None, usage: Json | None, text: str) -> None:
            self.streams.discard(stream)
            call.upstream_ms = (time.perf_counter() - started) * 1000
            assert call.route_result is not None
            if isinstance(error, UpstreamError):  # it broke off mid-stream: the deployment's failure
                upstream.router.failed_mid_stream(call.route_result, error)
            try:
                self._account(call, call.route_result.deployment, usage, messages, text)
            except UpstreamError as exc:  # already sent: count the answer ourselves, and say why
                call.extra["usage_error"] = exc.message
                self._account(call, call.route_result.deployment, None, messages, text)
            call.answer = text
            tracing.end(streaming, {"gen_ai.usage.output_tokens": call.tokens_out or 0})
            self.finish(call, status, error)

        stream = ChatStream(
            call,
            first,
            rest,
            include_usage=include_usage,
            count_usage=lambda text: self._usage_from_text(call, messages, text),
            end=end,
        )
        self.streams.add(stream)
        return stream

    async def system_chat(self, principal: Principal, body: Json) -> Json:
        """A chat completion for the gateway's own use (e.g. an online-eval judge), through the same flow
        and logged like any request, as `principal` (a system principal: no key)."""
        call = Call(
            request_id="req_" + secrets.token_hex(12), route="/v1/chat/completions", principal=principal
        )
        try:
            answer = await self.chat(call, ChatRequest.parse({**body, "stream": False}))
        except OpsgateError as exc:
            self.finish(call, exc.status, exc)
            raise
        self.finish(call, 200)
        assert isinstance(answer, dict)
        return answer

    async def shadow_chat(self, live: Call, order: ShadowOrder, request_id: str) -> int:
        """A shadow call (gateway/flow/shadow.py): the live request's body through the same flow with
        the rollout's candidate pinned, uncounted, as the live caller; logged, its answer dropped."""
        call = Call(request_id=request_id, route=live.route, principal=live.principal)
        call.pin = order.pin
        call.extra["shadow_of"] = live.request_id
        self.policy.uncounted(call)
        status, error = 200, None
        try:
            await self.chat(call, ChatRequest.parse(order.shadow_body()))
        except OpsgateError as exc:
            status, error = exc.status, exc
        except asyncio.CancelledError:
            self.finish(
                call, 499, OpsgateError("the gateway stopped during the shadow call", code="shadow_cut")
            )
            raise
        except Exception as exc:  # noqa: BLE001 - a bug: the row says so, as opened_call does for live calls
            status = 500
            error = OpsgateError(f"internal error ({type(exc).__name__}) in a shadow call")
        self.finish(call, status, error)
        return status

    # -- embeddings ----------------------------------------------------------------------------------

    async def embeddings(self, call: Call, request: EmbeddingRequest) -> Json:
        router, asked = self.resolver.router(call, request.model, "embedding")
        self.access.authorise(call.principal, [asked])
        self.catalog.adapters.params.check_request(request.body, "embedding")
        check_embedding_input(request.input, self.limits.embeddings, _vocab_size(router.spec.deployments))
        await self.policy.authorise(call, Subject.of(call.principal, (("router", router.name),), "embedding"))
        body = request.forward()
        await self.policy.admit(call, embedding_payload(router, body))
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

    # -- what a key may call --------------------------------------------------------------------------

    def models(self, principal: Principal) -> list[Json]:
        out: list[Json] = []
        for name in self.catalog.names("router"):
            router = self.catalog.router(name)
            if router is not None and principal.may_call("router", name):
                out.append(model_card(router))
        for name in self.catalog.names("prompt"):
            if not principal.may_call("prompt", name):
                continue
            record = self.catalog.find("prompt", name)
            if record is not None:
                out.append(prompt_card(record, self.catalog.prompt_spec(record)))
        return out

    def model(self, principal: Principal, model_id: str) -> Json:
        for card in self.models(principal):
            if model_id in (card["id"], f"{card['opsgate']['kind']}:{card['id']}"):
                return card
        raise ModelNotFound(f"the model {model_id!r} does not exist", param="model")

    # -- accounting and the log row ------------------------------------------------------------------

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
        call.tokens_in = _count(usage, "prompt_tokens", deployment)
        call.tokens_out = _count(usage, "completion_tokens", deployment)
        call.cost = cost_usd(_prices(deployment), call.tokens_in, call.tokens_out)

    def finish(self, call: Call, status: int, error: OpsgateError | None = None) -> None:
        """The end of every request: settle the limits, write the one log row, observe, run the hooks."""
        if call.finished:
            return
        call.finished = True
        self.policy.settle(call)  # true tokens and cost replace the estimates; stream decisions recorded
        result = call.route_result
        tried = result is not None and bool(result.attempts)
        row = LogRow(
            id=call.request_id,
            ts=call.ts,
            route=call.route,
            status=status,
            latency_ms=(time.perf_counter() - call.started) * 1000,
            key_id=call.principal.key_id if call.principal else None,
            principal=call.principal.principal if call.principal else None,
            model=call.model,
            artifacts=[str(ref) for ref in call.artifacts],
            upstream_model=result.deployment.model if result and tried else None,
            deployment=result.deployment.id if result and tried else None,
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
            extra=call.log_extra(),
        )
        with tracing.in_request(call, "opsgate.log_write"):
            self.writer.submit(row)
        if call.pin is None:  # shadow calls stay out of the request metrics (no caller made them)
            self.metrics.observe(row)
        for hook in self.finish_hooks:
            hook(call, row)
        tracing.end_request(call, row)
        if call.shadow is not None and not 400 <= status < 500:  # refused: nothing to compare
            self.shadows.submit(call, call.shadow)


def prompt_params(spec: PromptSpec) -> Json:
    params = spec.params.model_dump(exclude_none=True, exclude={"extra_body"})
    return {**spec.params.extra_body, **params}


def _vocab_size(deployments: Iterable[Deployment]) -> int:
    """The largest token vocabulary of these deployments (token ids in embedding inputs stay below it)."""
    return max((encoding_for(d.model).n_vocab for d in deployments), default=encoding_for("").n_vocab)


def _prices(deployment: Deployment) -> Prices | None:
    if deployment.input_cost_per_token is not None or deployment.output_cost_per_token is not None:
        return Prices(deployment.input_cost_per_token or 0.0, deployment.output_cost_per_token or 0.0)
    return prices_for(deployment.model)


def _count(usage: dict[str, Any], name: str, deployment: Deployment) -> int:
    """A token count from the upstream's `usage`: a non-negative whole number, or the upstream is at fault."""
    count = token_count(usage.get(name))
    if count is None:
        raise UpstreamError(
            f"deployment {deployment.id!r} ({deployment.model}) answered with usage.{name} ="
            f" {usage.get(name)!r}, which is not a token count",
            retryable=False,
            deployment=deployment.id,
            code="invalid_upstream_usage",
        )
    return count


def _answer_text(data: Json) -> str:
    choices = data.get("choices") or [{}]
    first = choices[0] if isinstance(choices[0], dict) else {}
    message = first.get("message")
    return message_text(message) if isinstance(message, dict) else ""
