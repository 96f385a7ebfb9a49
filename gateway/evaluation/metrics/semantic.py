"""Semantic similarity of answer and reference with the packaged MiniLM embeddings (no LLM, no network).

The ragas metric gets `embeddings=` explicitly: an adapter over gateway.providers.minilm that batches the
texts of concurrent cases into one encode call and caches repeated texts (references across repeats).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from gateway.evaluation.metrics.base import EvalContext, MetricDef, Resources
from gateway.evaluation.metrics.ragas_glue import ragas_metric, score_sample
from gateway.providers.minilm import MiniLMEmbedder

CACHE_SIZE = 20_000
MAX_BATCH = 64


def ragas_embeddings(embedder: MiniLMEmbedder) -> Any:
    """A ragas `BaseRagasEmbeddings` over our MiniLM embedder (class made lazily: ragas imports slowly)."""
    from ragas.embeddings.base import BaseRagasEmbeddings
    from ragas.run_config import RunConfig

    class MiniLMRagasEmbeddings(BaseRagasEmbeddings):
        def __init__(self) -> None:
            super().__init__()
            self.run_config = RunConfig()
            self.batcher = EmbeddingBatcher(embedder)

        def embed_query(self, text: str) -> list[float]:
            return [float(x) for x in embedder.encode([text])[0]]

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return [[float(x) for x in row] for row in embedder.encode(list(texts))]

        async def aembed_query(self, text: str) -> list[float]:
            return (await self.batcher.embed([text]))[0]

        async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
            return await self.batcher.embed(list(texts))

    return MiniLMRagasEmbeddings()


class EmbeddingBatcher:
    """Texts asked for in the same moment are encoded together, in a worker thread; results are cached."""

    def __init__(self, embedder: MiniLMEmbedder) -> None:
        self.embedder = embedder
        self.cache: OrderedDict[str, list[float]] = OrderedDict()
        self.pending: dict[str, asyncio.Future[list[float]]] = {}
        self.lock = asyncio.Lock()

    async def embed(self, texts: list[str]) -> list[list[float]]:
        futures = [self._future(t) for t in texts]
        if self.pending:
            async with self.lock:
                await self._drain()
        return [await f for f in futures]

    def _future(self, text: str) -> asyncio.Future[list[float]]:
        future: asyncio.Future[list[float]] = asyncio.get_running_loop().create_future()
        if text in self.cache:
            future.set_result(self.cache[text])
            return future
        if text in self.pending:
            return self.pending[text]
        self.pending[text] = future
        return future

    async def _drain(self) -> None:
        await asyncio.sleep(0)  # let concurrent cases add their texts to this batch
        while self.pending:
            batch = list(self.pending.items())[:MAX_BATCH]
            for text, _ in batch:
                del self.pending[text]
            texts = [t for t, _ in batch]
            try:
                vectors = await asyncio.to_thread(self.embedder.encode, texts)
            except Exception as exc:  # hand the failure to every waiter, then stop
                for _, future in batch:
                    future.set_exception(exc)
                raise
            for (text, future), vec in zip(batch, vectors, strict=True):
                values = [float(x) for x in vec]
                self.cache[text] = values
                if not future.done():
                    future.set_result(values)
            while len(self.cache) > CACHE_SIZE:
                self.cache.popitem(last=False)


@dataclass
class SemanticSimilarity:
    metric: Any

    async def evaluate(self, ctx: EvalContext) -> float | None:
        refs = ctx.case.all_references()
        if not refs or ctx.output.answer is None:
            return None
        scores = [await score_sample(self.metric, response=ctx.answer, reference=r) for r in refs]
        return max((s for s in scores if s is not None), default=None)


def _build(params: Any, resources: Resources) -> SemanticSimilarity:
    return SemanticSimilarity(ragas_metric("SemanticSimilarity", embeddings=resources.ragas_embeddings()))


FAMILY = [
    MetricDef(
        "semantic_similarity",
        "ragas SemanticSimilarity: cosine of answer and reference embeddings (packaged MiniLM)",
        _build,
        needs_embeddings=True,
    )
]
