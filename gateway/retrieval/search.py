"""Querying one index version: dense (chroma), lexical (BM25), or both fused by reciprocal rank.

Scores by mode: dense, the similarity (1 - cosine distance; for l2, 1 - d/2 on unit vectors);
lexical, the BM25 score; hybrid, the reciprocal-rank-fusion score scaled so that a chunk ranked first
by both retrievers scores 1.0. `min_score` compares with the mode's score.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Mode = Literal["dense", "lexical", "hybrid"]
MODES: tuple[Mode, ...] = ("dense", "lexical", "hybrid")
# The measured best on the SQuAD 2.0 subset (bench/retrieval_quality.py; hit@1 / hit@4 / MRR@10 of
# 293 questions): lexical .792/.962/.871, hybrid .775/.959/.861, dense .700/.894/.789. SQuAD questions
# were written looking at their paragraph, which favours BM25; paraphrased questions favour `hybrid`.
DEFAULT_MODE: Mode = "lexical"
RRF_K = 60
MIN_CANDIDATES = 20  # each retriever's list length before fusion: max(this, 4 x top_k)


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    text: str
    document_id: str
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def context(self, index_ref: str) -> dict[str, Any]:
        """What a prompt template sees for this chunk."""
        return {
            "id": self.id,
            "text": self.text,
            "document_id": self.document_id,
            "source": self.source,
            "score": round(self.score, 6),
            "index": index_ref,
            "metadata": dict(self.metadata),
        }


def _similarity(distance: float, space: str) -> float:
    return 1.0 - distance / 2.0 if space == "l2" else 1.0 - distance


def _hit(chunk_id: str, score: float, text: str | None, meta: dict[str, Any] | None) -> Hit:
    meta = dict(meta or {})
    document_id = str(meta.pop("document_id", chunk_id.rsplit("#", 1)[0]))
    source = str(meta.pop("source", ""))
    meta.pop("position", None)
    return Hit(chunk_id, score, text or "", document_id, source, meta)


def rrf(rankings: Sequence[Sequence[str]], k: int = RRF_K) -> list[tuple[str, float]]:
    """Reciprocal rank fusion, scaled to 1.0 for an item ranked first in every list; ties by first seen."""
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    best = len(rankings) / (k + 1)
    order: dict[str, int] = {}
    for item in (x for r in rankings for x in r):
        order.setdefault(item, len(order))
    return sorted(((item, s / best) for item, s in scores.items()), key=lambda p: (-p[1], order[p[0]]))


class IndexReader:
    """One open index version. Thread-safe for queries; the lexical side loads on first use."""

    def __init__(self, ref: str, collection: Any, space: str, lexical: Callable[[], Any]) -> None:
        self.ref = ref
        self.collection = collection
        self.space = space
        self._lexical_loader = lexical
        self._lexical: Any = None
        self._loading = threading.Lock()  # one load (or rebuild from chroma) at a time, not one per caller

    @property
    def lexical_loaded(self) -> bool:
        return self._lexical is not None

    def lexical_index(self) -> Any:
        if self._lexical is None:
            with self._loading:
                if self._lexical is None:
                    self._lexical = self._lexical_loader()
        return self._lexical

    def dense(self, vector: Sequence[float], n: int) -> list[Hit]:
        result = self.collection.query(
            query_embeddings=[list(map(float, vector))],
            n_results=n,
            include=["documents", "metadatas", "distances"],
        )
        ids, docs = result["ids"][0], (result["documents"] or [[]])[0]
        metas, dists = (result["metadatas"] or [[]])[0], (result["distances"] or [[]])[0]
        return [
            _hit(i, _similarity(float(d), self.space), t, m)
            for i, t, m, d in zip(ids, docs, metas, dists, strict=True)
        ]

    def fetch(self, scored: Sequence[tuple[str, float]]) -> list[Hit]:
        if not scored:
            return []
        got = self.collection.get(ids=[i for i, _ in scored], include=["documents", "metadatas"])
        found = {
            i: (t, m)
            for i, t, m in zip(got["ids"], got["documents"] or [], got["metadatas"] or [], strict=True)
        }
        return [_hit(i, s, *found[i]) for i, s in scored if i in found]

    def lexical(self, query: str, n: int) -> list[Hit]:
        return self.fetch(self.lexical_index().search(query, n))

    def search(self, query: str, vector: Sequence[float] | None, top_k: int, mode: Mode) -> list[Hit]:
        if mode == "lexical":
            return self.lexical(query, top_k)
        assert vector is not None, "dense and hybrid search need the query vector"
        if mode == "dense":
            return self.dense(vector, top_k)
        n = max(MIN_CANDIDATES, 4 * top_k)
        dense = self.dense(vector, n)
        lexical = self.lexical_index().search(query, n)
        fused = rrf([[h.id for h in dense], [i for i, _ in lexical]])[:top_k]
        known = {h.id: h for h in dense}
        missing = [(i, s) for i, s in fused if i not in known]
        known.update({h.id: h for h in self.fetch(missing)})
        return [
            Hit(h.id, s, h.text, h.document_id, h.source, h.metadata)
            for i, s in fused
            if (h := known.get(i)) is not None
        ]
