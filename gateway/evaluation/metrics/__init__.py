"""Metric families. Each file is one family (a list of `MetricDef`), registered in gateway.extensions.

strings.py     ragas string metrics with no LLM (exact match, presence, similarity, BLEU, ROUGE, chrF)
               and SQuAD token F1
context.py     ragas context precision / recall without an LLM: by text, and by ids
retrieval.py   our hit@k and MRR over the retrieved ids
semantic.py    semantic similarity with the packaged MiniLM embeddings
operational.py latency, cost, tokens
judged.py      ragas LLM-judged metrics; the judge is a router served by opsgate
"""

from __future__ import annotations

import functools

from gateway.evaluation.metrics.base import MetricDef, MetricRegistry


@functools.cache
def registry() -> MetricRegistry:
    from gateway.extensions import METRICS, load

    defs: list[MetricDef] = []
    for family in load(METRICS).values():
        defs.extend(family)
    return MetricRegistry(defs)
