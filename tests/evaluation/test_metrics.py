"""Metrics on hand-made answers: ragas string and context metrics, our retrieval metrics, MiniLM similarity."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.evaluation.metrics import registry
from gateway.evaluation.metrics.base import EvalCase, EvalContext, TargetOutput
from gateway.evaluation.runner import RunResources
from gateway.providers.minilm import MiniLMEmbedder

CASE = EvalCase(
    id="q1",
    question="In what country is Normandy located?",
    reference="France",
    references=("France", "the French Republic"),
    reference_contexts=("Normandy is a region in France.",),
    reference_context_ids=("Normans__p000",),
)
CITED = [
    {"document_id": "documents/Other__p003.txt", "chunk_id": "x#0", "index": 0},
    {
        "document_id": "Normans__p000",
        "chunk_id": "n#0",
        "index": 1,
        "text": "Normandy is a region in France.",
    },
]


async def score(
    name: str, answer: str | None = '"Normandy, a region in France."', **params: Any
) -> float | None:
    resources = RunResources(None, None, MiniLMEmbedder())
    metric = registry().build(name, params, resources)
    out = TargetOutput(
        answer=answer, citations=CITED, contexts=["Other text.", "Normandy is a region in France."]
    )
    return await metric.evaluate(EvalContext(CASE, out))


async def test_string_metrics_take_the_best_reference_and_squad_normalisation() -> None:
    assert await score("exact_match") == 0.0
    assert await score("exact_match", "The French republic!", normalize=True) == 1.0
    assert await score("exact_match", "The French republic!") == 0.0
    assert await score("string_presence", normalize=True) == 1.0
    assert await score("token_f1", "France, in Europe") == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))
    assert 0 < (await score("rouge") or 0) < 1 and 0 < (await score("chrf") or 0) < 1
    assert await score("exact_match", None) is None  # no answer (a failed call) is no score


async def test_retrieval_metrics_match_ids_across_paths_and_extensions() -> None:
    assert await score("hit_at_1") == 0.0
    assert await score("hit_at_2") == 1.0
    assert await score("hit_at_k", k=2) == 1.0
    assert await score("mrr") == 0.5
    assert await score("context_recall_ids") == 1.0
    assert await score("context_precision_ids") == 0.5
    assert await score("context_recall_nonllm") == 1.0


async def test_semantic_similarity_uses_the_packaged_minilm() -> None:
    close = await score("semantic_similarity", "It is in France.")
    far = await score("semantic_similarity", "Photosynthesis happens in leaves.")
    assert close is not None and far is not None and close > far and 0 < close <= 1


async def test_judged_metric_without_a_judge_says_what_to_do() -> None:
    from gateway.evaluation.runner import JudgeMissing

    with pytest.raises(JudgeMissing, match="needs a judge: a chat router served by opsgate"):
        await score("faithfulness")
