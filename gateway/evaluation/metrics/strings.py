"""String metrics with no LLM: ragas exact match, string presence, string similarity, BLEU, ROUGE, chrF,
and SQuAD's token F1. Scores are the best over every acceptable reference (SQuAD lists several);
`normalize: true` applies SQuAD's answer normalisation (case, punctuation, articles, spaces) first."""

from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

from gateway.evaluation.metrics.base import EvalContext, MetricDef, Resources
from gateway.evaluation.metrics.ragas_glue import ragas_metric, score_sample
from gateway.yamlspec import StrictModel

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation + "\u201c\u201d\u2018\u2019")


def normalize_answer(text: str) -> str:
    """SQuAD's official normalisation."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


class StringParams(StrictModel):
    normalize: bool = False


class SimilarityParams(StringParams):
    distance: Literal["levenshtein", "hamming", "jaro", "jaro_winkler"] = "levenshtein"


class RougeParams(StringParams):
    rouge_type: Literal["rouge1", "rougeL"] = "rougeL"
    mode: Literal["fmeasure", "precision", "recall"] = "fmeasure"


@dataclass
class BestOverReferences:
    """A ragas reference/response metric, scored against each reference; the best score counts."""

    metric: Any
    normalize: bool = False

    def _text(self, text: str) -> str:
        return normalize_answer(text) if self.normalize else text

    async def evaluate(self, ctx: EvalContext) -> float | None:
        refs = ctx.case.all_references()
        if not refs or ctx.output.answer is None:
            return None
        answer = self._text(ctx.answer)
        scores = [await score_sample(self.metric, response=answer, reference=self._text(r)) for r in refs]
        return max((s for s in scores if s is not None), default=None)


@dataclass
class TokenF1:
    """SQuAD's token-overlap F1 between the normalised answer and the best reference."""

    async def evaluate(self, ctx: EvalContext) -> float | None:
        refs = ctx.case.all_references()
        if not refs or ctx.output.answer is None:
            return None
        answer = normalize_answer(ctx.answer).split()
        return max(_f1(answer, normalize_answer(r).split()) for r in refs)


def _f1(pred: list[str], gold: list[str]) -> float:
    common = sum((Counter(pred) & Counter(gold)).values())
    if not pred or not gold:
        return float(pred == gold)
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def _ragas(cls_name: str, *passed: str) -> Any:
    """A builder of the ragas metric `cls_name`, given the suite's parameters named in `passed`."""

    def build(params: Any, resources: Resources) -> BestOverReferences:
        extra: dict[str, Any] = {k: getattr(params, k) for k in passed}
        if hasattr(params, "distance"):
            from ragas.metrics._string import DistanceMeasure

            extra["distance_measure"] = DistanceMeasure(params.distance)
        return BestOverReferences(ragas_metric(cls_name, **extra), normalize=params.normalize)

    return build


FAMILY = [
    MetricDef(
        "exact_match", "ragas ExactMatch: the answer equals a reference", _ragas("ExactMatch"), StringParams
    ),
    MetricDef(
        "string_presence",
        "ragas StringPresence: a reference appears in the answer",
        _ragas("StringPresence"),
        StringParams,
    ),
    MetricDef(
        "string_similarity",
        "ragas NonLLMStringSimilarity: 1 - normalised edit distance to the closest reference",
        _ragas("NonLLMStringSimilarity"),
        SimilarityParams,
    ),
    MetricDef("bleu", "ragas BleuScore (sacrebleu)", _ragas("BleuScore"), StringParams),
    MetricDef(
        "rouge",
        "ragas RougeScore (rouge-score; rougeL F-measure by default)",
        _ragas("RougeScore", "rouge_type", "mode"),
        RougeParams,
    ),
    MetricDef("chrf", "ragas ChrfScore (sacrebleu chrF)", _ragas("ChrfScore"), StringParams),
    MetricDef("token_f1", "SQuAD token F1 of the normalised answer", lambda p, r: TokenF1()),
]
