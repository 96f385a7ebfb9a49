"""What a metric is: a small object with one `evaluate(ctx)`, built from a definition and the run's resources.

A family file lists `MetricDef`s; `gateway.extensions` registers each family with one line (group
"opsgate.metrics"), and third-party packages add families as entry points the same way.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError

from gateway.yamlspec import StrictModel


@dataclass(frozen=True)
class EvalCase:
    """One line of a dataset, in our field names."""

    id: str
    question: str
    reference: str | None = None
    references: tuple[str, ...] = ()
    reference_contexts: tuple[str, ...] = ()
    reference_context_ids: tuple[str, ...] = ()
    variables: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def all_references(self) -> list[str]:
        """Every acceptable answer (SQuAD has several); the first is `reference`."""
        refs = [self.reference] if self.reference is not None else []
        return refs + [r for r in self.references if r not in refs]


@dataclass
class TargetOutput:
    """What the target answered for one case, and how the gateway served it."""

    answer: str | None = None
    contexts: list[str] | None = None  # retrieved chunk texts, when the gateway returned them
    context_ids: list[str] = field(default_factory=list)  # retrieved ids, best first
    citations: list[dict[str, Any]] = field(default_factory=list)
    request_id: str | None = None
    versions: list[str] = field(default_factory=list)
    latency_ms: float | None = None
    cost_usd: float | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class EvalContext:
    case: EvalCase
    output: TargetOutput

    @property
    def answer(self) -> str:
        return self.output.answer or ""


class Metric(Protocol):
    async def evaluate(self, ctx: EvalContext) -> float | None:
        """A score (higher is better unless the metric says otherwise), or None when it does not apply."""
        ...


class NoParams(StrictModel):
    pass


class Resources(Protocol):
    """What metrics may need beyond the case: built once per run, lazily."""

    def judge_llm(self) -> Any: ...

    def ragas_embeddings(self) -> Any: ...


Builder = Callable[[Any, Resources], Metric]


@dataclass(frozen=True)
class MetricDef:
    name: str
    description: str
    build: Builder
    params: type[BaseModel] = NoParams
    pattern: str | None = None  # e.g. r"hit_at_(?P<k>\d+)": named groups become parameters
    needs_judge: bool = False
    needs_embeddings: bool = False
    reference_free: bool = False  # usable online, where requests have no reference answer
    lower_is_better: bool = False

    def matches(self, name: str) -> dict[str, str] | None:
        if name == self.name:
            return {}
        if self.pattern:
            match = re.fullmatch(self.pattern, name)
            if match:
                return match.groupdict()
        return None

    def parse_params(self, name: str, params: dict[str, Any]) -> BaseModel:
        implied = self.matches(name) or {}
        try:
            return self.params.model_validate({**implied, **params})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or name
            msg = "unknown parameter" if first["type"] == "extra_forbidden" else first["msg"]
            raise ValueError(f"metric {name!r}: {where}: {msg}") from None

    def check_params(self, params: dict[str, Any], name: str | None = None) -> None:
        self.parse_params(name or self.name, params)


class MetricRegistry:
    def __init__(self, defs: list[MetricDef]) -> None:
        self.defs = defs

    def find(self, name: str) -> MetricDef:
        for definition in self.defs:
            if definition.matches(name) is not None:
                return definition
        known = ", ".join(d.name for d in self.defs)
        raise ValueError(f"unknown metric {name!r}; `opsgate eval metrics` lists them: {known}")

    def build(self, name: str, params: dict[str, Any], resources: Resources) -> Metric:
        definition = self.find(name)
        return definition.build(definition.parse_params(name, params), resources)
