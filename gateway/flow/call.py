"""`Call`: one request on its way through the gateway, and what its log row will say.

Every field is typed; the log row (gateway.monitoring.requestlog.LogRow) is one view of it, the
`x-opsgate-versions` header another, the online evaluator's sample a third.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from gateway.db.generation import utcnow
from gateway.keys import Principal
from gateway.shapes import ArtifactRef

if TYPE_CHECKING:
    from gateway.flow.shadow import Pin, ShadowOrder
    from gateway.retrieval.retriever import Retrieval
    from gateway.routing.router import RouteResult


@dataclass(slots=True)
class Call:
    request_id: str
    route: str
    started: float = field(default_factory=time.perf_counter)
    ts: datetime = field(default_factory=utcnow)
    principal: Principal | None = None
    model: str | None = None  # what the caller asked for, as sent
    artifacts: list[ArtifactRef] = field(default_factory=list)  # lineage: each version once
    stream: bool = False
    route_result: RouteResult | None = None
    upstream_ms: float | None = None
    ttft_ms: float | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost: float | None = None
    decisions: list[dict[str, Any]] = field(default_factory=list)
    retrieval: Retrieval | None = None  # a RAG prompt's hits: citations and the log entry are views
    include_context: bool = False  # the caller asked for chunk text in the citations
    question: str | None = None  # the caller's question (the retrieval query, or the last user message)
    answer: str | None = None  # the answer text the caller received (after output checks)
    extra: dict[str, Any] = field(default_factory=dict)
    policy: Any = None  # gateway.policy's state between its hooks (never logged)
    streaming: bool = False  # an SSE writer owns the call's end (and its log row)
    finished: bool = False
    trace: Any = None  # the request's OpenTelemetry span, when tracing is on (gateway.monitoring.tracing)
    shadow: ShadowOrder | None = None  # a live request sampled for a shadow rollout: run after it finishes
    pin: Pin | None = None  # this is a shadow call: the candidate version it must use

    def add(self, ref: ArtifactRef) -> None:
        """Record a version in the lineage (once, in the order the flow met them)."""
        if ref not in self.artifacts:
            self.artifacts.append(ref)

    @property
    def versions_header(self) -> str:
        return ",".join(self.artifacts)

    def citations(self) -> list[dict[str, Any]] | None:
        if self.retrieval is None:
            return None
        return self.retrieval.citations(include_text=self.include_context)

    def log_extra(self) -> dict[str, Any]:
        if self.retrieval is None:
            return self.extra
        return {**self.extra, "retrieval": self.retrieval.log_entry()}
