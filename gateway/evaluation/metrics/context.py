"""ragas context precision and recall with no LLM: by text (string similarity of retrieved and reference
contexts) and by ids (retrieved ids against reference ids, see retrieval.py for how ids match)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.evaluation.metrics.base import EvalContext, MetricDef, Resources
from gateway.evaluation.metrics.ragas_glue import ragas_metric, score_sample
from gateway.evaluation.metrics.retrieval import IdField, IdParams, normalize_id, retrieved_ids


@dataclass
class ByText:
    metric: Any

    async def evaluate(self, ctx: EvalContext) -> float | None:
        if ctx.output.contexts is None or not ctx.case.reference_contexts:
            return None
        return await score_sample(
            self.metric,
            retrieved_contexts=list(ctx.output.contexts) or [""],
            reference_contexts=list(ctx.case.reference_contexts),
        )


@dataclass
class ByIds:
    metric: Any
    id_field: IdField = "document_id"

    async def evaluate(self, ctx: EvalContext) -> float | None:
        if not ctx.case.reference_context_ids or ctx.output.error:
            return None
        return await score_sample(
            self.metric,
            retrieved_context_ids=retrieved_ids(ctx.output, self.id_field),
            reference_context_ids=[normalize_id(i) for i in ctx.case.reference_context_ids],
        )


def _text(cls_name: str) -> Any:
    return lambda params, resources: ByText(ragas_metric(cls_name))


def _ids(cls_name: str) -> Any:
    def build(params: IdParams, resources: Resources) -> ByIds:
        return ByIds(ragas_metric(cls_name), params.id_field)

    return build


FAMILY = [
    MetricDef(
        "context_precision_nonllm",
        "ragas NonLLMContextPrecisionWithReference: retrieved contexts that match a reference context",
        _text("NonLLMContextPrecisionWithReference"),
    ),
    MetricDef(
        "context_recall_nonllm",
        "ragas NonLLMContextRecall: reference contexts found among the retrieved ones",
        _text("NonLLMContextRecall"),
    ),
    MetricDef(
        "context_precision_ids",
        "ragas IDBasedContextPrecision: share of retrieved ids that are reference ids",
        _ids("IDBasedContextPrecision"),
        IdParams,
    ),
    MetricDef(
        "context_recall_ids",
        "ragas IDBasedContextRecall: share of reference ids that were retrieved",
        _ids("IDBasedContextRecall"),
        IdParams,
    ),
]
