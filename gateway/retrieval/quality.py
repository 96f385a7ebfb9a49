"""Retrieval and answer quality against a QA set with gold documents (e.g. SQuAD): hit@k, MRR, EM, F1.

A question is a hit at k when a chunk of its gold document is among the first k chunks retrieved.
EM and F1 are SQuAD's: lower case, no punctuation, no articles, whitespace collapsed; the best score
over the reference answers counts.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

MRR_DEPTH = 10


@dataclass(frozen=True)
class QA:
    id: str
    question: str
    document_id: str
    answers: list[str]


def load_answerable(qa_file: Path) -> list[QA]:
    out = []
    for line in qa_file.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = orjson.loads(line)
        if row.get("is_impossible"):
            continue
        out.append(QA(row["id"], row["question"], row["document_id"], list(row["answers"])))
    return out


@dataclass(frozen=True)
class RetrievalScores:
    questions: int
    hit_at_1: float
    hit_at_4: float
    mrr: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "questions": self.questions,
            "hit@1": self.hit_at_1,
            "hit@4": self.hit_at_4,
            "mrr@10": self.mrr,
        }


def gold_rank(document_ids: Sequence[str], gold: str) -> int | None:
    """1-based rank of the first chunk of the gold document, or None."""
    for rank, doc in enumerate(document_ids, start=1):
        if doc == gold:
            return rank
    return None


def retrieval_scores(ranked: Iterable[tuple[Sequence[str], str]]) -> RetrievalScores:
    """`ranked`: (document ids of the retrieved chunks in order, gold document id) per question."""
    ranks = [gold_rank(docs, gold) for docs, gold in ranked]
    n = len(ranks) or 1
    return RetrievalScores(
        len(ranks),
        sum(1 for r in ranks if r is not None and r <= 1) / n,
        sum(1 for r in ranks if r is not None and r <= 4) / n,
        sum(1.0 / r for r in ranks if r is not None and r <= MRR_DEPTH) / n,
    )


def normalize_answer(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, references: Sequence[str]) -> float:
    return max((float(normalize_answer(prediction) == normalize_answer(r)) for r in references), default=0.0)


def _f1(prediction: str, reference: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    common = Counter(pred) & Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, references: Sequence[str]) -> float:
    return max((_f1(prediction, r) for r in references), default=0.0)


_CITATION = re.compile(r"\s*\[[^\]\s]{1,200}\]")


def strip_citations(answer: str) -> str:
    """The answer text without `[chunk-id]` citations and the quotes around quoted sentences."""
    text = _CITATION.sub("", answer)
    return " ".join(part.strip().strip('"') for part in text.split('" "')).strip().strip('"')


def answer_scores(cases: Sequence[QA], answer: Callable[[QA], str]) -> dict[str, float]:
    em = f1 = 0.0
    for case in cases:
        prediction = strip_citations(answer(case))
        em += exact_match(prediction, case.answers)
        f1 += token_f1(prediction, case.answers)
    n = len(cases) or 1
    return {"questions": len(cases), "exact_match": em / n, "f1": f1 / n}
