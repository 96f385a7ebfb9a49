"""Eval runs and case results in the database. A run is stamped with the suite file's hash, the dataset's
hash, the exact target version and hash, every artifact version that served it (prompt, router, index,
judge), and the versions of opsgate and ragas. The registry's promotion rule reads `eval_runs`."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import Session

from gateway import __version__
from gateway.db.generation import as_utc
from gateway.db.models import EvalResult, EvalRun
from gateway.errors import NotFound
from gateway.evaluation.runner import RunResult, ScoreRow, ScoreTable
from gateway.registry import audit

PASSED, FAILED, ERROR = "passed", "failed", "error"


def tool_versions() -> dict[str, str]:
    out = {"opsgate": __version__, "python": platform.python_version()}
    for package in ("ragas", "openai"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "absent"
    return out


@dataclass(frozen=True)
class StoredRun:
    id: str
    suite: str
    suite_hash: str | None
    dataset_hash: str | None
    target_ref: str | None
    target_kind: str | None
    target_name: str | None
    target_version: int | None
    versions: list[str]
    status: str
    passed: bool
    cases: int
    errors: int
    started_at: datetime
    finished_at: datetime | None
    summary: dict[str, Any]
    tool_versions: dict[str, Any]
    created_by: str
    baseline_run_id: str | None
    mode: str | None

    @property
    def label(self) -> str:
        return f"{self.target_kind}:{self.target_name}@{self.target_version}"

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["started_at"] = self.started_at.isoformat()
        out["finished_at"] = self.finished_at.isoformat() if self.finished_at else None
        return out


def _stored(row: EvalRun) -> StoredRun:
    return StoredRun(
        row.id,
        row.suite,
        row.suite_hash,
        row.dataset_hash,
        row.target_ref,
        row.target_kind,
        row.target_name,
        row.target_version,
        list(row.versions),
        row.status,
        bool(row.passed),
        row.cases,
        row.errors,
        as_utc(row.started_at),
        as_utc(row.finished_at) if row.finished_at else None,
        dict(row.summary),
        dict(row.tool_versions),
        row.created_by,
        row.baseline_run_id,
        row.mode,
    )


def save_run(
    engine: Engine,
    run: RunResult,
    *,
    status: str,
    summary: dict[str, Any],
    created_by: str,
    baseline_run_id: str | None = None,
) -> None:
    """The run and all its case results, in one transaction, with its `eval.run` audit entry: a promotion
    whose alias requires the suite counts only a run the chain records as passed (so a run inserted, or
    flipped to passed, in the database does not count)."""
    versions = run.versions
    if run.judge is not None and run.judge.ref not in versions:
        versions = [*versions, run.judge.ref]

    def work(s: Session) -> None:
        s.add(
            EvalRun(
                id=run.id,
                suite=run.suite.spec.name,
                suite_path=run.suite.path,
                suite_hash=run.suite.content_hash,
                dataset_hash=run.dataset.content_hash,
                target_kind=run.target.kind,
                target_name=run.target.name,
                target_version=run.target.version,
                target_hash=run.target.content_hash,
                target_ref=run.target.ref,
                versions=versions,
                baseline_run_id=baseline_run_id,
                mode=run.mode,
                status=status,
                passed=status == PASSED,
                cases=len(run.dataset.cases),
                errors=run.errors,
                started_at=run.started_at,
                finished_at=run.finished_at,
                summary=summary,
                tool_versions=tool_versions(),
                created_by=created_by,
            )
        )
        s.flush()
        rows = [
            {
                "run_id": run.id,
                "case_id": r.case.id,
                "repeat": r.repeat,
                "request_id": r.output.request_id,
                "question": r.case.question,
                "answer": r.output.answer,
                "reference": r.case.reference,
                "scores": r.scores,
                "passed": r.passed,
                "latency_ms": r.output.latency_ms,
                "cost_usd": r.output.cost_usd,
                "error": r.output.error,
                "versions": r.output.versions,
                "data": {
                    "contexts": r.output.contexts,
                    "citations": r.output.citations,
                    "metric_errors": r.metric_errors,
                    "tokens_in": r.output.tokens_in,
                    "tokens_out": r.output.tokens_out,
                },
            }
            for r in run.results
        ]
        for start in range(0, len(rows), 1000):
            s.execute(insert(EvalResult), rows[start : start + 1000])
        audit.append(
            s,
            actor=created_by,
            action="eval.run",
            target=f"{run.target.kind}:{run.target.name}@{run.target.version}",
            after={
                "run": run.id,
                "suite": run.suite.spec.name,
                "suite_hash": run.suite.content_hash,
                "target_hash": run.target.content_hash,
                "status": status,
                "passed": status == PASSED,
            },
        )

    audit.write_transaction(engine, work)


def get_run(engine: Engine, run_id: str) -> StoredRun:
    with Session(engine) as s:
        row = s.get(EvalRun, run_id)
        if row is None:
            raise NotFound(f"no eval run {run_id!r} (see `opsgate eval runs`)")
        return _stored(row)


def list_runs(engine: Engine, *, suite: str | None = None, limit: int = 50) -> list[StoredRun]:
    with Session(engine) as s:
        q = select(EvalRun).order_by(EvalRun.started_at.desc()).limit(limit)
        if suite:
            q = q.where(EvalRun.suite == suite)
        return [_stored(r) for r in s.scalars(q)]


def load_table(engine: Engine, run_id: str) -> ScoreTable:
    run = get_run(engine, run_id)
    with Session(engine) as s:
        results = s.scalars(
            select(EvalResult).where(EvalResult.run_id == run_id).order_by(EvalResult.id)
        ).all()
        rows = [
            ScoreRow(
                r.case_id,
                r.repeat,
                dict(r.scores),
                r.latency_ms,
                r.cost_usd,
                r.error,
                r.question,
                r.answer,
            )
            for r in results
        ]
    return ScoreTable(run.id, run.label, rows)


def reusable_run(engine: Engine, run: RunResult, *, kind: str, name: str, version: int) -> str | None:
    """A finished run of the same suite file and dataset on that version (no need to run it again)."""
    with Session(engine) as s:
        return s.scalar(
            select(EvalRun.id)
            .where(
                EvalRun.suite == run.suite.spec.name,
                EvalRun.suite_hash == run.suite.content_hash,
                EvalRun.dataset_hash == run.dataset.content_hash,
                EvalRun.target_kind == kind,
                EvalRun.target_name == name,
                EvalRun.target_version == version,
                EvalRun.status != ERROR,
            )
            .order_by(EvalRun.started_at.desc())
            .limit(1)
        )
