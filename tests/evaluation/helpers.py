"""Runs built by hand (no gateway): what gate, compare and report tests feed on."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

from gateway.evaluation.dataset import Dataset
from gateway.evaluation.metrics.base import EvalCase, TargetOutput
from gateway.evaluation.runner import CaseResult, RunResult
from gateway.evaluation.spec import LoadedSuite, SuiteSpec
from gateway.registry.store import VersionRecord

NOW = datetime(2026, 11, 28, tzinfo=UTC)


def record(version: int = 2) -> VersionRecord:
    return VersionRecord("prompt", "qa", version, hashlib.sha256(str(version).encode()).hexdigest(), {}, None,
                         None, None, None, False, NOW, "test")  # fmt: skip


def suite(**fields: object) -> LoadedSuite:
    spec = SuiteSpec.model_validate(
        {
            "name": "qa",
            "target": "prompt:qa@staging",
            "dataset": "x.jsonl",
            "metrics": ["exact_match", "hit_at_4"],
            **fields,
        }
    )
    return LoadedSuite(spec=spec, path="evals/qa.yaml", content_hash="0" * 64)


def run(
    scores: dict[str, list[list[float | None]]],
    *,
    errors: set[tuple[str, int]] = frozenset(),
    **suite_fields: object,
) -> RunResult:  # type: ignore[assignment]
    """scores: metric -> one list per case, one score per repeat."""
    loaded = suite(**suite_fields)
    first = next(iter(scores.values()))
    cases = [EvalCase(id=f"c{i}", question=f"q{i}", reference="r") for i in range(len(first))]
    results = []
    for i, case in enumerate(cases):
        for rep in range(len(first[i])):
            error = "HTTP 500: boom" if (case.id, rep) in errors else None
            out = TargetOutput(answer=None if error else "a", error=error, latency_ms=10.0 + i)
            values = {k: (None if error else v[i][rep]) for k, v in scores.items()}
            results.append(CaseResult(case, rep, out, values))
    dataset = Dataset(Path("x.jsonl"), "1" * 64, cases)
    return RunResult("run_test", loaded, dataset, record(), "in-process", results, NOW, NOW)
