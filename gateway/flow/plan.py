"""Resolve: what a request names, looked up in the catalog's memory snapshot (no I/O, no waiting).

A chat request names a router (`default`, `router:default@production`) or a prompt (`docs_qa`,
`prompt:docs_qa@7`, LiteLLM's `prompt_id`), and a prompt names its router and, for RAG, its index.
Resolving finds every version once, checks that the key may be served each of them, validates the
prompt's variables, and records the lineage on the call (prompt, router, index, in that order).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.catalog import Catalog
from gateway.errors import InvalidFields, InvalidRequest, ModelNotFound, PermissionDenied
from gateway.flow.access import VersionAccess
from gateway.flow.call import Call
from gateway.keys import Principal
from gateway.registry.refs import Ref, parse_ref
from gateway.registry.render import check_variables
from gateway.registry.specs import PromptSpec
from gateway.registry.store import VersionRecord
from gateway.retrieval.retriever import IndexRetriever
from gateway.routing.router import Router
from gateway.wire import ChatRequest


@dataclass(slots=True)
class ChatPlan:
    """A chat request with everything it names resolved."""

    request: ChatRequest
    router: Router
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
    def __init__(self, catalog: Catalog, access: VersionAccess, retriever: IndexRetriever | None) -> None:
        self.catalog = catalog
        self.access = access
        self.retriever = retriever

    def chat(self, call: Call, request: ChatRequest) -> ChatPlan:
        call.model = request.model
        prompt_ref = self._prompt_ref(request)
        if prompt_ref is None:
            if not request.messages:
                raise InvalidFields(
                    "messages: this field is required (at least one message)", param="messages"
                )
            return ChatPlan(request, self.router(call, request.model, "chat"))
        principal = _principal(call)
        record = self.catalog.resolve("prompt", prompt_ref.name, prompt_ref.selector)
        _allowed(principal, "prompt", record.name)
        self.access.check(principal, record, prompt_ref.selector)
        call.add(record.ref)
        spec = self.catalog.prompt_spec(record)
        check_variables(spec, request.prompt_variables or {})
        ref = parse_ref(spec.router, default_kind="router")
        router_record = self.catalog.resolve("router", ref.name, ref.selector)
        self.access.check(principal, router_record, ref.selector, pinned=True)
        router = self._router(call, router_record, "chat")  # a key allowed the prompt may use its router
        index = None
        if spec.retrieval is not None:
            if self.retriever is None:
                raise InvalidRequest(
                    f"prompt {spec.name!r} needs retrieval, which this gateway was built without",
                    code="retrieval_unavailable",
                )
            index = self.retriever.resolve(spec.retrieval.index, spec.name)
            selector = parse_ref(spec.retrieval.index, default_kind="index").selector
            self.access.check(principal, index, selector, pinned=True)
            call.add(index.ref)
        return ChatPlan(request, router, record, spec, index)

    def router(self, call: Call, model: str, kind: str) -> Router:
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
        record = self.catalog.resolve("router", ref.name, ref.selector)
        principal = _principal(call)
        _allowed(principal, "router", record.name)
        self.access.check(principal, record, ref.selector)
        return self._router(call, record, kind)

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


def _principal(call: Call) -> Principal:
    assert call.principal is not None, "authenticate before resolving"
    return call.principal


def _allowed(principal: Principal, kind: str, name: str) -> None:
    if not principal.may_call(kind, name):
        raise PermissionDenied(
            f"this key may not call {kind}:{name} (its allow list does not include it)", param="model"
        )
