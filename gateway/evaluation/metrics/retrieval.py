"""Retrieval metrics of our own over the ids the gateway cited, best first: hit@k and MRR.

Retrieved ids come from the answer's `citations` (`id_field`: document_id by default, or chunk_id or
source). An id matches a reference id when they are equal once directories and file extensions are
dropped, so `documents/Normans__p000.txt` matches `Normans__p000`.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from gateway.evaluation.metrics.base import EvalContext, MetricDef, Resources, TargetOutput
from gateway.yamlspec import StrictModel

IdField = Literal["document_id", "chunk_id", "source"]


def normalize_id(value: object) -> str:
    base = posixpath.basename(str(value).replace("\\", "/"))
    stem, dot, ext = base.rpartition(".")
    return stem if dot and stem and ext.isalnum() and not ext.isdigit() else base


def retrieved_ids(output: TargetOutput, id_field: IdField = "document_id") -> list[str]:
    ordered = sorted(output.citations, key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)
    return [normalize_id(c[id_field]) for c in ordered if isinstance(c, dict) and c.get(id_field) is not None]


def reference_ids(ctx: EvalContext) -> set[str]:
    return {normalize_id(i) for i in ctx.case.reference_context_ids}


class IdParams(StrictModel):
    id_field: IdField = "document_id"


class HitParams(IdParams):
    k: int = Field(ge=1, le=1000)


@dataclass
class HitAtK:
    k: int
    id_field: IdField = "document_id"

    async def evaluate(self, ctx: EvalContext) -> float | None:
        gold = reference_ids(ctx)
        if not gold or ctx.output.error:
            return None
        return float(any(i in gold for i in retrieved_ids(ctx.output, self.id_field)[: self.k]))


@dataclass
class ReciprocalRank:
    id_field: IdField = "document_id"

    async def evaluate(self, ctx: EvalContext) -> float | None:
        gold = reference_ids(ctx)
        if not gold or ctx.output.error:
            return None
        for rank, i in enumerate(retrieved_ids(ctx.output, self.id_field), start=1):
            if i in gold:
                return 1.0 / rank
        return 0.0


def _hit(params: HitParams, resources: Resources) -> HitAtK:
    return HitAtK(params.k, params.id_field)


def _mrr(params: IdParams, resources: Resources) -> ReciprocalRank:
    return ReciprocalRank(params.id_field)


FAMILY = [
    MetricDef(
        "hit_at_k",
        "1 when a reference id is among the first k retrieved (write hit_at_4, or hit_at_k with k:)",
        _hit,
        HitParams,
        pattern=r"hit_at_(?P<k>\d+)",
    ),
    MetricDef("mrr", "reciprocal rank of the first retrieved reference id (0 when none)", _mrr, IdParams),
]
