"""ragas LLM-judged metrics. The judge is a chat router served by opsgate (`judge:` in the suite or in a
prompt's online_eval): ragas gets `llm=llm_factory(router, client=AsyncOpenAI(base_url=<opsgate>/v1))`
and, where it embeds, `embeddings=` the packaged MiniLM, so it never reaches a provider on its own.
A suite that uses one of these without a judge is refused when it is loaded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.evaluation.metrics.base import EvalContext, MetricDef, Resources
from gateway.evaluation.metrics.ragas_glue import ragas_metric, score_sample


@dataclass
class Judged:
    metric: Any
    needs_contexts: bool = True
    needs_reference: bool = False

    async def evaluate(self, ctx: EvalContext) -> float | None:
        if ctx.output.answer is None:
            return None
        fields: dict[str, Any] = {"user_input": ctx.case.question, "response": ctx.answer}
        if self.needs_contexts:
            if not ctx.output.contexts:
                return None
            fields["retrieved_contexts"] = list(ctx.output.contexts)
        if self.needs_reference:
            if ctx.case.reference is None:
                return None
            fields["reference"] = ctx.case.reference
        return await score_sample(self.metric, **fields)


def _judged(
    cls_name: str, *, embeddings: bool = False, contexts: bool = True, reference: bool = False
) -> Any:
    def build(params: Any, resources: Resources) -> Judged:
        kwargs: dict[str, Any] = {"llm": resources.judge_llm()}
        if embeddings:
            kwargs["embeddings"] = resources.ragas_embeddings()
        return Judged(ragas_metric(cls_name, **kwargs), needs_contexts=contexts, needs_reference=reference)

    return build


FAMILY = [
    MetricDef(
        "faithfulness",
        "ragas Faithfulness (LLM judge): share of the answer's claims supported by the retrieved context",
        _judged("Faithfulness"),
        needs_judge=True,
        reference_free=True,
    ),
    MetricDef(
        "response_relevancy",
        "ragas ResponseRelevancy (LLM judge + MiniLM): does the answer address the question",
        _judged("ResponseRelevancy", embeddings=True, contexts=False),
        needs_judge=True,
        needs_embeddings=True,
        reference_free=True,
    ),
    MetricDef(
        "context_precision",
        "ragas LLMContextPrecisionWithReference (LLM judge): are the retrieved chunks useful, ranked well",
        _judged("LLMContextPrecisionWithReference", reference=True),
        needs_judge=True,
    ),
    MetricDef(
        "context_recall",
        "ragas LLMContextRecall (LLM judge): is the reference answer supported by the retrieved context",
        _judged("LLMContextRecall", reference=True),
        needs_judge=True,
    ),
]
