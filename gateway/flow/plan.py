"""Resolve: what a request names, looked up in the catalog's memory snapshot (no I/O, no waiting).

A chat request names a router (`default`, `router:default@production`) or a prompt (`docs_qa`,
`prompt:docs_qa@7`, LiteLLM's `prompt_id`), and a prompt names its router and, for RAG, its index.
Resolving finds every version once, validates the prompt's variables, records the lineage on the call
(prompt, router, index, in that order) and notes how each version was asked for, so that `authorise`
can decide whether this key may be served it (gateway.flow.access).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.api_requests import ChatRequest
from gateway.db.generation import utcnow
from gateway.errors import InvalidParameter, InvalidRequest, ModelNotFound
from gateway.flow.call import Call
from gateway.flow.shadow import Pin, ShadowOrder
from gateway.prompts.render import check_variables
from gateway.prompts.spec import PromptSpec
from gateway.registry.refs import Ref, parse_ref
from gateway.registry.store import VersionRecord
from gateway.retrieval.retriever import IndexRetriever
from gateway.routing.router import Router
from gateway.snapshot import Catalog


@dataclass(frozen=True, slots=True)
class Asked:
    """One version a request will use, and how it was named: by the caller (`listed`: the key's allow
    list applies) or by an approved artifact (`pinned`: a version number there was approved with it)."""

    record: VersionRecord
    selector: str | None
    listed: bool = True
    pinned: bool = False


@dataclass(slots=True)
class ChatPlan:
    """A chat request with everything it names resolved."""

    request: ChatRequest
    router: Router
    asked: list[Asked]
    prompt: VersionRecord | None = None
    spec: PromptSpec | None = None
    index: VersionRecord | None = None
    # set by authorise: the caller's messages and variables, screened, to build the retrieval query from
    query_source: tuple[list[Any], dict[str, Any]] | None = field(default=None)

    @property
    def targets(self) -> tuple[tuple[str, str], ...]:
        """(kind, name) of what the request calls: what policy rules match on."""
        out = [("router", self.router.name)]
        if self.prompt is not None:
            out.insert(0, ("prompt", self.prompt.name))
        if self.index is not None:
            out.append(("index", self.index.name))
        return tuple(out)

    @property
    def variables(self) -> dict[str, Any]:
        return self.request.prompt_variables or {}


class Resolver:
    def __init__(self, catalog: Catalog, retriever: IndexRetriever | None) -> None:
        self.catalog = catalog
        self.retriever = retriever

    def chat(self, call: Call, request: ChatRequest) -> ChatPlan:
        call.model = request.model
        prompt_ref = self._prompt_ref(request)
        if prompt_ref is None:
            if not request.messages:
                raise InvalidParameter(
                    "messages: this field is required (at least one message)",
                    param="messages",
                    code="missing_required_parameter" if "messages" not in request.body else "empty_array",
                )
            router, named = self.router(call, request.model, "chat", request)
            return ChatPlan(request, router, [named])
        record = self._resolve(call, request, "prompt", prompt_ref.name, prompt_ref.selector)
        call.add(record.ref)
        spec = self.catalog.prompt_spec(record)
        check_variables(spec, request.prompt_variables or {})
        ref = parse_ref(spec.router, default_kind="router")
        router_record = self._resolve(call, request, "router", ref.name, ref.selector)
        router = self._router(call, router_record, "chat")
        # a key allowed the prompt may use what it runs on: no allow list for its router and index
        asked = [Asked(record, prompt_ref.selector), Asked(router_record, ref.selector, False, True)]
        index = None
        if spec.retrieval is not None:
            if self.retriever is None:
                raise InvalidRequest(
                    f"prompt {spec.name!r} needs retrieval, which this gateway was built without",
                    code="retrieval_unavailable",
                )
            index = self.retriever.resolve(
                spec.retrieval.index,
                spec.name,
                lambda kind, name, selector: self._resolve(call, request, kind, name, selector),
            )
            call.add(index.ref)
            selector = parse_ref(spec.retrieval.index, default_kind="index").selector
            asked.append(Asked(index, selector, False, True))
        return ChatPlan(request, router, asked, record, spec, index)

    def router(
        self, call: Call, model: str, kind: str, request: ChatRequest | None = None
    ) -> tuple[Router, Asked]:
        """A router named by the caller: `name`, `router:name`, with optional @version/@alias."""
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
        record = self._resolve(call, request, "router", ref.name, ref.selector)
        return self._router(call, record, kind), Asked(record, ref.selector)

    def _resolve(
        self, call: Call, request: ChatRequest | None, kind: str, name: str, selector: str | None
    ) -> VersionRecord:
        """A version by number or alias; an alias under a live rollout serves the caller's arm
        (sticky per key principal and `user`), and the log row says which (`extra.rollout`). A request
        sampled by a shadow rollout leaves its shadow order on the call; a shadow call is pinned to the
        candidate (gateway/flow/shadow.py)."""
        pin = call.pin
        if pin is not None and (pin.kind, pin.name) == (kind, name):
            call.extra["rollout"] = {"id": pin.rollout_id, "arm": "shadow", "target": f"{kind}:{name}"}
            return self.catalog.resolve(kind, name, str(pin.version))
        principal = call.principal.principal if call.principal is not None else "anonymous"
        user = request.end_user if request is not None else None
        caller = f"{principal}:{user}" if user else principal
        record, assigned = self.catalog.resolve_for(kind, name, selector, caller)
        if assigned is not None and pin is None:  # a shadow call's other versions: as the live call's
            call.extra["rollout"] = tag = assigned.tag(kind, name)
            live = assigned.rollout
            if request is not None and live.shadowed(call.request_id, utcnow()):
                tag["shadowed"] = True
                call.shadow = ShadowOrder(Pin(kind, name, live.candidate, live.id), request.body)
        return record

    def _router(self, call: Call, record: VersionRecord, kind: str) -> Router:
        router = self.catalog.router_for(record)
        if router.spec.kind != kind:
            raise InvalidRequest(
                f"router {router.name!r} serves {router.spec.kind} requests, not {kind}",
                param="model",
                code="wrong_model_kind",
            )
        call.add(router.ref)
        return router

    def _prompt_ref(self, request: ChatRequest) -> Ref | None:
        """`prompt:x[@sel]`, a bare name that is a prompt, or LiteLLM's prompt_id (+ prompt_version)."""
        if request.prompt_id:
            selector = str(request.prompt_version) if request.prompt_version is not None else None
            ref = parse_ref(request.prompt_id, default_kind="prompt", param="prompt_id")
            return Ref("prompt", ref.name, selector or ref.selector)
        try:
            ref = parse_ref(request.model, param="model")
        except InvalidRequest:
            return None  # not a reference at all: the router lookup answers 404
        if ref.kind == "prompt":
            return ref
        if (
            ref.kind is None
            and not self.catalog.has("router", ref.name)
            and self.catalog.has("prompt", ref.name)
        ):
            return Ref("prompt", ref.name, ref.selector)
        return None
