"""Query latency (embed the query + search) at 10k and 100k chunks, and memory.

    .venv/bin/python bench/retrieval_query.py [--sizes 10000 100000] [--real 2000] [--queries 200]

Chunks are synthesized from the SQuAD subset's text: each real chunk is three sentences drawn (seeded)
from its 87 paragraphs, embedded with MiniLM. Embedding 100k chunks takes hours on 2 busy cores, so
beyond `--real` real embeddings each further chunk is the concatenation of two real chunks, with the
normalized sum of their two vectors (MiniLM mean-pools tokens, so this approximates the embedding of
the concatenated text). BM25 indexes every chunk's real text. Queries are the subset's questions,
embedded at query time; the table gives embed + search and search alone. Each size gets a fresh chroma collection (PersistentClient, cosine HNSW
defaults) and BM25 index, queried through `IndexReader.search` as the gateway does.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from retrieval_common import QA_FILE, REPO

from gateway.providers.minilm import MiniLMEmbedder
from gateway.retrieval.chunkers import sentences
from gateway.retrieval.lexical import LexicalIndex
from gateway.retrieval.quality import load_answerable
from gateway.retrieval.search import MODES, IndexReader
from gateway.retrieval.store import ChromaStore, add_batches


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def synthesize(n: int, real: int, minilm: MiniLMEmbedder, rng: random.Random) -> tuple[list[str], np.ndarray]:
    docs = sorted((REPO / "evals" / "data" / "squad_v2_small" / "documents").glob("*.txt"))
    pool = [s for d in docs for s in sentences(d.read_text(encoding="utf-8"))]
    base = [" ".join(rng.sample(pool, 3)) for _ in range(min(n, real))]
    t0 = time.perf_counter()
    vectors = minilm.encode(base)
    print(f"  embedded {len(base)} real chunks in {time.perf_counter() - t0:.0f} s", flush=True)
    texts, rows = list(base), [vectors]
    extra = n - len(base)
    if extra > 0:
        a = np.array([rng.randrange(len(base)) for _ in range(extra)])
        b = np.array([rng.randrange(len(base)) for _ in range(extra)])
        mixed = vectors[a] + vectors[b]
        rows.append(mixed / np.linalg.norm(mixed, axis=1, keepdims=True))
        texts.extend(f"{base[i]} {base[j]}" for i, j in zip(a, b, strict=True))
    return texts, np.concatenate(rows).astype(np.float32)


def quantiles(values: list[float]) -> tuple[float, float]:
    """p50 and p99 (nearest rank)."""
    ordered = sorted(values)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--real", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--top-k", type=int, default=4)
    args = parser.parse_args()
    minilm = MiniLMEmbedder()
    minilm.encode(["warm up"])
    questions = [c.question for c in load_answerable(QA_FILE)][: args.queries]
    rng = random.Random(20261128)
    print(f"process RSS with MiniLM loaded: {rss_mb():.0f} MB", flush=True)
    rows = []
    for size in args.sizes:
        print(f"{size} chunks:", flush=True)
        texts, vectors = synthesize(size, args.real, minilm, rng)
        ids = [f"c{i}#0" for i in range(size)]
        metas = [{"document_id": f"c{i}", "source": "synthetic", "position": 0} for i in range(size)]
        tmp = Path(tempfile.mkdtemp(prefix="opsgate-query-"))
        try:
            before = rss_mb()
            store = ChromaStore(path=tmp / "chroma", minilm=minilm)
            collection = store.create_staging(f"bench-{size}", {"type": "local"}, "cosine")
            t0 = time.perf_counter()
            add_batches(collection, ids, vectors, texts, metas)
            add_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            lexical = LexicalIndex.build(ids, texts)
            lexical.save(tmp / "lexical")
            bm25_s = time.perf_counter() - t0
            reader = IndexReader("index:bench", collection, "cosine", lambda lx=lexical: lx)
            for q in questions[:10]:  # warm caches
                reader.search(q, minilm.encode([q])[0], args.top_k, "hybrid")
            for mode in MODES:
                total, search = [], []
                for q in questions:
                    t0 = time.perf_counter()
                    vector = None if mode == "lexical" else minilm.encode([q])[0]
                    t1 = time.perf_counter()
                    reader.search(q, vector, args.top_k, mode)
                    t2 = time.perf_counter()
                    total.append((t2 - t0) * 1000)
                    search.append((t2 - t1) * 1000)
                rows.append((size, mode, *quantiles(total), *quantiles(search)))
                print(f"  {mode:<8} embed+search p50/p99 {rows[-1][2]:.1f}/{rows[-1][3]:.1f} ms", flush=True)
            print(
                f"  chroma add {size / add_s:,.0f} vectors/s; BM25 build {bm25_s:.1f} s; RSS +{rss_mb() - before:.0f} MB"
                f" (now {rss_mb():.0f} MB); on disk chroma {dir_mb(tmp / 'chroma'):.0f} MB, BM25"
                f" {dir_mb(tmp / 'lexical'):.0f} MB",
                flush=True,
            )
            del reader, collection, lexical
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nload average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())} (2 cores)")
    print(f"{len(questions)} queries, top_k {args.top_k}; ms")
    print(f"{'chunks':>8} {'mode':<8} {'p50':>7} {'p99':>7}  {'search-only p50':>15} {'p99':>7}")
    for size, mode, p50, p99, s50, s99 in rows:
        print(f"{size:>8} {mode:<8} {p50:>7.1f} {p99:>7.1f}  {s50:>15.1f} {s99:>7.1f}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
