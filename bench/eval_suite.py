"""Benchmark: a 1,000-case eval suite with the non-LLM metrics, through the whole gateway in-process.

The cases are the SQuAD subset's answerable questions, cycled to 1,000 (distinct ids), asked of the
RAG prompt squad_qa (local extractive provider, `squad` index). Each case is one real request through
opsgate (auth, retrieval, rendering, routing, the request log) plus every metric. Printed: start-up,
wall time of the cases, cases per second, with string/context/retrieval metrics, then with the MiniLM
semantic similarity added, then the metrics alone on stored answers (no calls).

    .venv/bin/python bench/eval_suite.py [--cases 1000] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gateway.offline import apply_offline_env  # noqa: E402

apply_offline_env()

NON_LLM = """\
  - {name: exact_match, normalize: true}
  - {name: string_presence, normalize: true}
  - string_similarity
  - token_f1
  - bleu
  - rouge
  - chrf
  - hit_at_1
  - hit_at_4
  - mrr
  - context_precision_ids
  - context_recall_ids
  - context_precision_nonllm
  - context_recall_nonllm
  - latency_ms
"""
SUITE = """\
name: bench_{name}
target: prompt:squad_qa@production
dataset: evals/data/bench.jsonl
metrics:
{metrics}gates:
  - {{metric: hit_at_4, min: 0.5}}
concurrency: {concurrency}
"""


def make_project(root: Path, cases: int, concurrency: int) -> Path:
    shutil.copytree(REPO / "config", root / "config")
    (root / "config" / "indexes" / "docs.yaml").unlink(missing_ok=True)
    shutil.copytree(REPO / "evals" / "data" / "squad_v2_small", root / "evals" / "data" / "squad_v2_small")
    (root / "prompts").mkdir()
    shutil.copy(REPO / "prompts" / "squad_qa.yaml", root / "prompts" / "squad_qa.yaml")
    lines = [orjson.loads(x) for x in (root / "evals/data/squad_v2_small/qa.jsonl").read_bytes().splitlines()]
    answerable = [x for x in lines if not x["is_impossible"]]
    out = []
    for i in range(cases):
        src = answerable[i % len(answerable)]
        out.append(
            {
                "id": f"c{i:04d}",
                "question": src["question"],
                "reference": src["reference_answer"],
                "references": src["answers"],
                "reference_contexts": [src["reference_context"]],
                "reference_context_ids": [src["document_id"]],
            }
        )
    (root / "evals" / "data" / "bench.jsonl").write_bytes(b"\n".join(orjson.dumps(x) for x in out) + b"\n")
    for name, metrics in (("nonllm", NON_LLM), ("semantic", NON_LLM + "  - semantic_similarity\n")):
        text = SUITE.format(name=name, metrics=metrics, concurrency=concurrency)
        (root / "evals" / f"bench_{name}.yaml").write_text(text, encoding="utf-8")
    return root


async def timed_run(
    root: Path, suite: str, settings: object, engine: object, key: str, limit: int | None
) -> tuple[float, object]:
    from gateway.evaluation.service import RunRequest, execute

    request = RunRequest(root / "evals" / suite, root, key, settings=settings, limit=limit)
    started = time.perf_counter()
    outcome = await execute(request, engine)  # type: ignore[arg-type]
    return time.perf_counter() - started, outcome


def metrics_only(outcome: object) -> tuple[int, float]:
    """Score the stored answers again with the same metrics, without any call."""
    from gateway.evaluation.runner import RunResources, build_metrics, score_case
    from gateway.providers.minilm import MiniLMEmbedder

    run = outcome.run  # type: ignore[attr-defined]
    metrics = build_metrics(run.suite, RunResources(None, None, MiniLMEmbedder()))

    async def all_cases() -> None:
        for r in run.results:
            r.scores.clear()
            await score_case(metrics, r)

    started = time.perf_counter()
    asyncio.run(all_cases())
    return len(run.results), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    from gateway.app import prepare_database
    from gateway.settings import Settings

    with tempfile.TemporaryDirectory(prefix="opsgate-bench-eval-") as tmp:
        root = make_project(Path(tmp) / "project", args.cases, args.concurrency)
        settings = Settings(project_dir=root, data_dir=Path(tmp) / "data")
        engine = prepare_database(settings)
        key = (Path(tmp) / "data" / "admin.key").read_text().strip()
        warm, _ = asyncio.run(timed_run(root, "bench_nonllm.yaml", settings, engine, key, 8))
        print(f"warm-up (first start: builds the squad index, loads MiniLM; 8 cases): {warm:.1f} s")
        for suite in ("bench_nonllm.yaml", "bench_semantic.yaml"):
            total, outcome = asyncio.run(timed_run(root, suite, settings, engine, key, None))
            run = outcome.run  # type: ignore[attr-defined]
            cases_s = (run.finished_at - run.started_at).total_seconds()
            n = len(run.results)
            print(
                f"{suite}: {n} cases, {len(run.metric_keys)} metrics, concurrency {args.concurrency}: "
                f"cases {cases_s:.1f} s = {n / cases_s:.1f} cases/s; whole command incl. app start-up and "
                f"storing {total:.1f} s; status {outcome.status}; "  # type: ignore[attr-defined]
                f"hit_at_4 {outcome.summary['metrics']['hit_at_4']['mean']:.3f}"  # type: ignore[attr-defined]
            )
            scored, seconds = metrics_only(outcome)
            print(
                f"  metrics alone on the stored answers: {scored} cases in {seconds:.2f} s = {scored / seconds:.0f} cases/s"
            )
        engine.dispose()


if __name__ == "__main__":
    main()
