"""One `opsgate eval run`, start to end: load, resolve versions, run the candidate (and the baseline when a
gate needs one that is not stored yet), decide the gates, store everything. The CLI only prints."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from gateway.errors import AuthenticationFailed, ConfigError, NotFound
from gateway.evaluation.dataset import load_dataset, resolve_path
from gateway.evaluation.gates import GateResult, evaluate_gates
from gateway.evaluation.runner import Progress, RunResources, RunResult, ScoreTable, run_suite
from gateway.evaluation.spec import BaselineGate, LoadedSuite, load_suite
from gateway.evaluation.store import ERROR, FAILED, PASSED, load_table, reusable_run, save_run
from gateway.evaluation.target import Connection, connect, resolve_target
from gateway.keys import KeyService, Principal, hash_key
from gateway.providers.minilm import MiniLMEmbedder
from gateway.registry.store import VersionRecord

log = logging.getLogger("opsgate.evaluation")


@dataclass
class Outcome:
    run: RunResult
    gates: list[GateResult]
    status: str
    summary: dict[str, Any]
    baselines: dict[str, ScoreTable | None] = field(default_factory=dict)

    @property
    def baseline(self) -> ScoreTable | None:
        return next((b for b in self.baselines.values() if b is not None), None)


@dataclass
class RunRequest:
    suite_file: Path
    project_dir: Path
    api_key: str
    target: str | None = None
    baseline: str | None = None
    url: str | None = None
    app: Callable[[], Any] | None = None  # builds the in-process gateway when there is no url
    limit: int | None = None
    data_dir: Path | None = None  # the gateway's data directory: never a dataset's source


def principal_for(engine: Engine, api_key: str) -> Principal:
    principal = KeyService(engine).active_principals().get(hash_key(api_key))
    if principal is None:
        raise AuthenticationFailed("invalid API key: it is unknown or was revoked (set OPSGATE_API_KEY)")
    return principal


def load(request: RunRequest) -> LoadedSuite:
    display = str(request.suite_file)
    with contextlib.suppress(ValueError):
        display = str(request.suite_file.resolve().relative_to(request.project_dir.resolve()))
    return load_suite(request.suite_file, display=display)


def summarise(
    run: RunResult, gates: list[GateResult], baselines: dict[str, ScoreTable | None]
) -> dict[str, Any]:
    from gateway.evaluation.runner import describe

    keys = [*run.metric_keys, *(k for k in ("latency_ms", "cost_usd") if k not in run.metric_keys)]
    base_stats = {
        sel: {"run_id": t.run_id, "ref": t.label, "metrics": {k: describe(t.values(k)) for k in keys}}
        for sel, t in baselines.items()
        if t is not None
    }
    return {
        "metrics": {k: run.stats(k) for k in keys},
        "gates": [g.as_dict() for g in gates],
        "calls": len(run.results),
        "errors": run.errors,
        "repeats": run.suite.spec.repeats,
        "dataset": {
            "path": str(run.dataset.path),
            "hash": run.dataset.content_hash,
            "cases": len(run.dataset.cases),
        },
        "judge": run.judge.ref if run.judge else None,
        "baselines": base_stats,
        "target": run.target.ref,
    }


async def execute(request: RunRequest, engine: Engine, progress: Progress | None = None) -> Outcome:
    suite = load(request)
    spec = suite.spec
    principal = principal_for(engine, request.api_key)
    target = resolve_target(engine, request.target or spec.target)
    judge = resolve_target(engine, spec.judge, default_kind="router") if spec.judge else None
    data_spec = (
        spec.dataset if request.limit is None else spec.dataset.model_copy(update={"limit": request.limit})
    )
    try:
        root, rel = resolve_path(data_spec, request.project_dir, request.suite_file.parent, request.data_dir)
        dataset = load_dataset(data_spec, root, rel, display=data_spec.path)
    except ConfigError as exc:
        if exc.path is not None:  # a problem inside the dataset file, at its own line
            raise
        raise ConfigError(exc.detail, path=suite.path, line=suite.dataset_line) from None
    embedder = MiniLMEmbedder()
    async with connect(
        url=request.url, api_key=request.api_key, app=request.app, timeout_s=spec.timeout_s
    ) as conn:
        resources = RunResources(conn, judge.name if judge else None, embedder)
        run = await run_suite(
            suite, dataset, target, conn, resources, progress=progress, judge=judge, engine=engine
        )
        baselines = await _baselines(request, engine, run, conn, resources, progress)
    gates = evaluate_gates(run, baselines)
    status = _status(run, gates)
    summary = summarise(run, gates, baselines)
    base_id = next((t.run_id for t in baselines.values() if t is not None and t.run_id != run.id), None)
    save_run(
        engine, run, status=status, summary=summary, created_by=principal.principal, baseline_run_id=base_id
    )
    return Outcome(run, gates, status, summary, baselines)


def _status(run: RunResult, gates: list[GateResult]) -> str:
    if run.results and run.errors == len(run.results):
        return ERROR  # nothing answered: a wrong key, a dead gateway, a broken target
    return PASSED if all(g.passed for g in gates) else FAILED


def _selectors(run: RunResult, override: str | None) -> list[str]:
    gates = [g for g in run.suite.spec.gates if isinstance(g, BaselineGate)]
    if override:
        return [override]
    return sorted({g.min_delta_vs for g in gates})


async def _baselines(
    request: RunRequest,
    engine: Engine,
    run: RunResult,
    conn: Connection,
    resources: RunResources,
    progress: Progress | None,
) -> dict[str, ScoreTable | None]:
    out: dict[str, ScoreTable | None] = {}
    for selector in _selectors(run, request.baseline):
        try:
            record = resolve_target(engine, f"{run.target.kind}:{run.target.name}@{selector}")
        except NotFound:
            out[selector] = None
            continue
        out[selector] = await _baseline_table(engine, run, record, conn, resources, progress)
    if request.baseline:  # the CLI's --baseline replaces every gate's own baseline
        for gate in run.suite.spec.gates:
            if isinstance(gate, BaselineGate):
                out.setdefault(gate.min_delta_vs, out[request.baseline])
    return out


async def _baseline_table(
    engine: Engine,
    run: RunResult,
    record: VersionRecord,
    conn: Connection,
    resources: RunResources,
    progress: Progress | None,
) -> ScoreTable:
    if record.version == run.target.version:
        return run.table()
    stored = reusable_run(engine, run, kind=record.kind, name=record.name, version=record.version)
    if stored is not None:
        log.info("baseline %s: reusing stored run %s", record.ref, stored)
        return load_table(engine, stored)
    log.info("baseline %s: no stored run of this suite; running it", record.ref)
    base = await run_suite(
        run.suite, run.dataset, record, conn, resources, progress=progress, judge=run.judge, engine=engine
    )
    gates = evaluate_gates(base, {}, with_baseline=False)
    save_run(
        engine,
        base,
        status=_status(base, gates),
        summary={**summarise(base, gates, {}), "role": "baseline", "for_run": run.id},
        created_by="system:eval-baseline",
    )
    return base.table()
