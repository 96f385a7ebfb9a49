"""Running a suite: every case (times `repeats`) through the target, at most `concurrency` at once, then
every metric on each answer. The result is plain data (`RunResult`); gates, store and reports read it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from gateway.db.generation import utcnow
from gateway.errors import ConfigError
from gateway.evaluation.dataset import Dataset
from gateway.evaluation.metrics import registry
from gateway.evaluation.metrics.base import EvalCase, EvalContext, Metric, TargetOutput
from gateway.evaluation.spec import LoadedSuite, Stat
from gateway.evaluation.target import Connection, TargetCaller, fill_costs
from gateway.providers.minilm import MiniLMEmbedder
from gateway.registry.store import VersionRecord

log = logging.getLogger("opsgate.evaluation")
Progress = Callable[[int, int], None]  # (done, total)


class JudgeMissing(ConfigError):
    pass


class RunResources:
    """The judge and the embeddings, built at most once per run and only when a metric asks."""

    def __init__(self, connection: Connection | None, judge: str | None, embedder: MiniLMEmbedder) -> None:
        self.connection = connection
        self.judge = judge
        self.embedder = embedder
        self._llm: Any = None
        self._embeddings: Any = None

    def judge_llm(self) -> Any:
        if self.judge is None or self.connection is None:
            raise JudgeMissing(
                "an LLM-judged metric needs a judge: a chat router served by opsgate (`judge:` in the suite,"
                " or in the prompt's online_eval); opsgate never lets ragas call a provider on its own"
            )
        if self._llm is None:
            from ragas.llms import llm_factory

            self._llm = llm_factory(self.judge, client=self.connection.client)
        return self._llm

    def ragas_embeddings(self) -> Any:
        if self._embeddings is None:
            from gateway.evaluation.metrics.semantic import ragas_embeddings

            self._embeddings = ragas_embeddings(self.embedder)
        return self._embeddings


@dataclass
class CaseResult:
    case: EvalCase
    repeat: int
    output: TargetOutput
    scores: dict[str, float | None] = field(default_factory=dict)
    metric_errors: dict[str, str] = field(default_factory=dict)
    passed: bool | None = None  # against the suite's per-case minimums, when it has any


@dataclass(frozen=True)
class ScoreRow:
    case_id: str
    repeat: int
    scores: dict[str, float | None]
    latency_ms: float | None = None
    cost_usd: float | None = None
    error: str | None = None
    question: str | None = None
    answer: str | None = None


@dataclass
class ScoreTable:
    """Every case's scores of one run: what baselines, compare and reports need (live or from the store)."""

    run_id: str
    label: str  # e.g. prompt:support_qa@3
    rows: list[ScoreRow]

    def value(self, row: ScoreRow, key: str) -> float | None:
        if key in row.scores:
            return row.scores[key]
        if key in ("latency_ms", "cost_usd"):
            return getattr(row, key)  # type: ignore[no-any-return]
        return None

    def values(self, key: str) -> list[float]:
        return [v for r in self.rows if (v := self.value(r, key)) is not None]

    def by_case(self, key: str) -> dict[str, float]:
        """Mean over repeats of each case's score (cases with no score are left out)."""
        sums: dict[str, list[float]] = {}
        for r in self.rows:
            value = self.value(r, key)
            if value is not None:
                sums.setdefault(r.case_id, []).append(value)
        return {cid: sum(vs) / len(vs) for cid, vs in sums.items()}

    def metric_keys(self) -> list[str]:
        seen: dict[str, None] = {}
        for r in self.rows:
            seen.update(dict.fromkeys(r.scores))
        return list(seen)


@dataclass
class RunResult:
    id: str
    suite: LoadedSuite
    dataset: Dataset
    target: VersionRecord
    mode: str
    results: list[CaseResult]
    started_at: datetime
    finished_at: datetime
    judge: VersionRecord | None = None

    @property
    def metric_keys(self) -> list[str]:
        return [m.key for m in self.suite.spec.metrics]

    @property
    def errors(self) -> int:
        return sum(1 for r in self.results if r.output.error)

    @property
    def versions(self) -> list[str]:
        seen = {v for r in self.results for v in r.output.versions}
        return sorted(seen)

    @property
    def label(self) -> str:
        return f"{self.target.kind}:{self.target.name}@{self.target.version}"

    def table(self) -> ScoreTable:
        rows = [
            ScoreRow(
                r.case.id,
                r.repeat,
                dict(r.scores),
                r.output.latency_ms,
                r.output.cost_usd,
                r.output.error,
                r.case.question,
                r.output.answer,
            )
            for r in self.results
        ]
        return ScoreTable(self.id, self.label, rows)

    def stats(self, key: str) -> dict[str, Any]:
        values = self.table().values(key)
        return describe(values, missing=len(self.results) - len(values))


def stat(values: list[float], which: Stat) -> float | None:
    if not values:
        return None
    if which == "mean":
        return sum(values) / len(values)
    if which == "median":
        return float(statistics.median(values))
    if which == "p95":
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
    return min(values) if which == "min" else max(values)


def describe(values: list[float], *, missing: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(values), "missing": missing}
    stats: tuple[Stat, ...] = ("mean", "median", "p95", "min", "max")
    for which in stats:
        out[which] = stat(values, which)
    return out


def build_metrics(suite: LoadedSuite, resources: RunResources) -> dict[str, Metric]:
    reg = registry()
    return {use.key: reg.build(use.name, use.params, resources) for use in suite.spec.metrics}


async def score_case(metrics: dict[str, Metric], result: CaseResult) -> None:
    ctx = EvalContext(result.case, result.output)
    for key, metric in metrics.items():
        if result.output.error:
            result.scores[key] = None
            continue
        try:
            result.scores[key] = await metric.evaluate(ctx)
        except Exception as exc:  # noqa: BLE001  # one metric failing (a judge error) must not lose the case
            result.scores[key] = None
            result.metric_errors[key] = f"{type(exc).__name__}: {exc}"[:1000]
            log.warning("metric %s failed on case %s: %s", key, result.case.id, exc)


async def run_suite(
    suite: LoadedSuite,
    dataset: Dataset,
    target: VersionRecord,
    connection: Connection,
    resources: RunResources,
    *,
    run_id: str | None = None,
    progress: Progress | None = None,
    judge: VersionRecord | None = None,
    engine: Engine | None = None,
) -> RunResult:
    spec = suite.spec
    run_id = run_id or "run_" + secrets.token_hex(8)
    caller = TargetCaller(connection, spec, target, Path(suite.path).parent, run_id)
    metrics = build_metrics(suite, resources)
    total = len(dataset.cases) * spec.repeats
    started = utcnow()
    gate = asyncio.Semaphore(spec.concurrency)
    done = 0

    async def one(case: EvalCase, repeat: int) -> CaseResult:
        nonlocal done
        async with gate:
            output = await caller.call(case)
            row = connection.served.get(output.request_id or "")
            if row is not None:
                output.cost_usd = row.cost_usd
            result = CaseResult(case, repeat, output)
            await score_case(metrics, result)
        done += 1
        if progress:
            progress(done, total)
        return result

    jobs = [one(case, r) for r in range(spec.repeats) for case in dataset.cases]
    results = list(await asyncio.gather(*jobs))
    if engine is not None and not connection.served:
        await fill_costs([r.output for r in results], connection, engine)
        cost_keys = {u.key for u in spec.metrics if u.name == "cost_usd"}
        for r in results:
            for key in cost_keys & set(r.scores):
                r.scores[key] = await metrics[key].evaluate(EvalContext(r.case, r.output))
    return RunResult(run_id, suite, dataset, target, connection.mode, results, started, utcnow(), judge=judge)
