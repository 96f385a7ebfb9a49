"""Ingest throughput: `IndexBuilder.build` end to end against raw `SentenceTransformer.encode` on the
same chunks, on this machine.

    .venv/bin/python bench/retrieval_ingest.py [--copies 3] [--rounds 2]

The corpus is the SQuAD subset's 87 paragraphs, `--copies` times, each copy with its sentences rotated
(distinct texts of the same kind), as a JSONL source chunked by tokens 200/30. "Ours" is the whole
build: manifest and hash, parse, chunk, embed, chroma adds (PersistentClient), BM25, registry write.
"Raw" is `model.encode(chunk_texts, batch_size=64)` on exactly the chunks the build made, with the
model already loaded (as the build's is: both are warmed first, the build by a two-document build).
Rounds alternate which goes first, so a busy machine slows both alike; the ratio of the medians and
the median of the per-round ratios are reported.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import orjson
from retrieval_common import REPO, Workspace

from gateway.providers.minilm import MiniLMEmbedder
from gateway.retrieval.chunkers import chunk_document, sentences
from gateway.retrieval.sources import Document
from gateway.retrieval.spec import TokenChunker

SPEC = """name: bench
source: {type: jsonl, paths: [corpus.jsonl]}
chunker: {type: tokens, size: 200, overlap: 30}
"""


def corpus(copies: int) -> list[dict[str, str]]:
    docs = sorted((REPO / "evals" / "data" / "squad_v2_small" / "documents").glob("*.txt"))
    out = []
    for copy in range(copies):
        for doc in docs:
            parts = sentences(doc.read_text(encoding="utf-8"))
            k = copy % len(parts)
            out.append({"id": f"{doc.stem}-{copy}", "text": " ".join(parts[k:] + parts[:k])})
    return out


def tiny(root: Path, records: list[dict[str, str]]) -> Path:
    """A two-document project: the warm-up build loads chromadb and bm25s before anything is timed."""
    project = root / "warm-project"
    (project / "config" / "indexes").mkdir(parents=True)
    (project / "config" / "indexes" / "bench.yaml").write_text(SPEC, encoding="utf-8")
    (project / "corpus.jsonl").write_bytes(b"\n".join(orjson.dumps(r) for r in records))
    return project


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    records = corpus(args.copies)
    texts = [
        c.text
        for r in records
        for c in chunk_document(
            Document(r["id"], r["text"], "corpus.jsonl"), TokenChunker(size=200, overlap=30)
        )
    ]
    minilm = MiniLMEmbedder()
    model = minilm.model()
    model.encode(texts[:64], batch_size=64)  # warm-up
    raw_rates, our_rates = [], []
    with tempfile.TemporaryDirectory(prefix="opsgate-ingest-") as tmp:
        project = Path(tmp) / "project"
        (project / "config" / "indexes").mkdir(parents=True)
        (project / "config" / "indexes" / "bench.yaml").write_text(SPEC, encoding="utf-8")
        (project / "corpus.jsonl").write_bytes(b"\n".join(orjson.dumps(r) for r in records))
        Workspace(Path(tmp) / "warm", project_dir=tiny(Path(tmp), records[:2]), minilm=minilm).build("bench")
        for i in range(args.rounds):
            ws = Workspace(Path(tmp) / f"ws{i}", project_dir=project, minilm=minilm)
            for which in ("raw", "ours") if i % 2 == 0 else ("ours", "raw"):  # alternate who goes first
                t0 = time.perf_counter()
                if which == "raw":
                    model.encode(texts, batch_size=64, show_progress_bar=False)
                    raw_rates.append(len(texts) / (time.perf_counter() - t0))
                    continue
                result = ws.build("bench")
                assert result.status == "built" and result.chunks == len(texts), (result.chunks, len(texts))
                our_rates.append(result.chunks / (time.perf_counter() - t0))
            print(
                f"round {i + 1}: raw encode {raw_rates[-1]:.1f} chunks/s, opsgate build {our_rates[-1]:.1f}"
                f" chunks/s, ratio {our_rates[-1] / raw_rates[-1]:.1%}",
                flush=True,
            )
    raw, ours = statistics.median(raw_rates), statistics.median(our_rates)
    tokens = sum(len(minilm.tokenizer().encode(t)) for t in texts) / len(texts)
    print(f"\n{len(records)} documents -> {len(texts)} chunks (mean {tokens:.0f} word pieces)")
    print(f"raw SentenceTransformer.encode  {raw:8.1f} chunks/s (median of {args.rounds})")
    print(f"opsgate index build (end to end) {ours:8.1f} chunks/s (median of {args.rounds})")
    ratios = [o / r for o, r in zip(our_rates, raw_rates, strict=True)]
    print(f"ratio of medians                 {ours / raw:8.1%}   (target >= 90%)")
    print(f"median of per-round ratios       {statistics.median(ratios):8.1%}")
    print(f"load average at the end          {' '.join(f'{x:.1f}' for x in os.getloadavg())} (2 cores)")
    print(
        f"peak RSS                         {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:8.0f} MB"
    )


if __name__ == "__main__":
    main()
