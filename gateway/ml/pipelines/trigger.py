"""A model's drift, accuracy or fairness breach starts its pipeline: once across replicas, at most once
per `trigger.min_interval_s`.

Only a pipeline whose `production` alias points at a version with a `trigger:` section is started, and
only that version: what runs was approved like any artifact, and it runs no command (a pipeline is data:
gateway/ml/pipelines/catalog.py). Every replica's monitor sees the same breach; each asks for the run
inside one transaction that first takes the pipeline's lock row (gateway/db/generation.py `lock_key`:
a row lock on PostgreSQL, the write lock on SQLite), reads the last claim and writes its own only when
the interval has passed. The one replica whose claim commits runs the pipeline in a background thread;
the others see that claim and skip. The candidate then waits for promotion like every version.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.db.generation import as_utc, lock_key, utcnow
from gateway.ml.pipelines.spec import PipelineSpec
from gateway.registry.store import VersionRecord, VersionStore

log = logging.getLogger("opsgate.ml.pipelines")
TRIGGER_KIND = "pipeline_trigger"
BREACHES = ("drift", "accuracy", "fairness")


def triggered_pipelines(
    engine: Engine, model: str, breached: list[str]
) -> list[tuple[VersionRecord, PipelineSpec, list[str]]]:
    """(production pipeline version, its spec, the breaches it answers) for pipelines producing `model`."""
    store = VersionStore(engine)
    out = []
    for (_, name), aliases in store.aliases("pipeline").items():
        version = aliases.get("production")
        if version is None:
            continue
        record = store.get("pipeline", name, version)
        if record is None:
            continue
        try:
            spec = PipelineSpec.model_validate(record.spec)
        except ValueError as exc:
            log.warning("%s cannot be read (%s): it is not triggered", record.ref, exc)
            continue
        if spec.model != model or spec.trigger is None:
            continue
        reasons = [str(k) for k in spec.trigger.on if k in breached]
        if reasons:
            out.append((record, spec, reasons))
    return out


def claim(
    engine: Engine, record: VersionRecord, spec: PipelineSpec, reasons: list[str], model_ref: str
) -> bool:
    """True for exactly one caller per interval, across processes sharing the database."""
    try:
        return _claim(engine, record, spec, reasons, model_ref)
    except IntegrityError:  # two replicas created the lock row at once: it exists now
        return _claim(engine, record, spec, reasons, model_ref)


def _claim(
    engine: Engine, record: VersionRecord, spec: PipelineSpec, reasons: list[str], model_ref: str
) -> bool:
    from gateway.ml.tables import MLReport

    assert spec.trigger is not None
    lock = "ml-pipeline:" + hashlib.sha1(record.name.encode()).hexdigest()
    with engine.begin() as conn, Session(bind=conn) as session:
        lock_key(conn, lock)
        q = (
            select(MLReport)
            .where(MLReport.name == spec.model, MLReport.kind == TRIGGER_KIND)
            .order_by(MLReport.id.desc())
            .limit(200)
        )
        for last in session.scalars(q):
            if last.result.get("pipeline") == record.name:
                if (utcnow() - as_utc(last.ts)).total_seconds() < spec.trigger.min_interval_s:
                    return False
                break
        session.add(
            MLReport(
                ts=utcnow(),
                name=spec.model,
                version=record.version,
                kind=TRIGGER_KIND,
                breached=True,
                result={
                    "pipeline": record.name,
                    "pipeline_ref": str(record.ref),
                    "reasons": reasons,
                    "model": model_ref,
                },
            )
        )
        session.commit()
    return True


class PipelineTrigger:
    """Held by the ML monitor: on a breach, claim and start the model's pipelines in the background."""

    def __init__(self, engine: Engine, project_dir: Path, data_dir: Path, config_loader: Any = None) -> None:
        self.engine = engine
        self.project_dir = project_dir
        self.data_dir = data_dir
        self.config_loader = config_loader  # () -> GatewayConfig (the operator's ml.pipelines, trust, egress)
        self._tasks: set[asyncio.Task[Any]] = set()

    def _due(self, served: Any, found: dict[str, Any]) -> list[tuple[VersionRecord, PipelineSpec, list[str]]]:
        breached = [k for k in BREACHES if (found.get(k) or {}).get("breached")]
        if not breached:
            return []
        return [
            (record, spec, reasons)
            for record, spec, reasons in triggered_pipelines(self.engine, served.name, breached)
            if claim(self.engine, record, spec, reasons, str(served.ref))
        ]

    async def on_breach(self, served: Any, found: dict[str, Any]) -> list[dict[str, Any]]:
        """The runs this replica started (an empty list on the replicas that lost the claim)."""
        due = await asyncio.to_thread(self._due, served, found)
        started = []
        for record, _spec, reasons in due:
            self.start_run(record, f"{', '.join(reasons)} breach of {served.ref}", "opsgate-monitor")
            started.append({"pipeline": str(record.ref), "reasons": reasons, "status": "running"})
        return started

    def start_run(self, record: VersionRecord, reason: str, actor: str) -> None:
        """Run a claimed pipeline version in a background thread (drift triggers, the scheduler)."""
        task = asyncio.create_task(
            asyncio.to_thread(self._run, record, reason, actor), name=f"opsgate-pipeline-{record.name}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def running(self, name: str) -> bool:
        return any(t.get_name() == f"opsgate-pipeline-{name}" and not t.done() for t in self._tasks)

    def _run(self, record: VersionRecord, reason: str, actor: str = "opsgate-monitor") -> Any:
        from gateway.ml.pipelines.run import run_pipeline

        try:
            config = self.config_loader() if self.config_loader is not None else None
            result = run_pipeline(
                self.engine,
                self.project_dir,
                f"{record.name}@{record.version}",
                actor=actor,
                data_dir=self.data_dir,
                config=config,
                reason=reason,
            )
        except Exception:  # a background thread: say it here
            log.exception("%s run of %s failed", actor, record.ref)
            return None
        log.info(
            "%s: run %s of %s: %s%s",
            actor, result.run_id, result.pipeline, result.status,
            f", candidate {result.candidate}" if result.candidate else f" ({'; '.join(result.failed_gates) or result.error})",
        )  # fmt: skip
        return result

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def stop(self) -> None:
        """Stop waiting for the runs; a run already training finishes in its thread (it cannot be
        interrupted), and its claim stays, so no other replica starts it again within the interval."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
