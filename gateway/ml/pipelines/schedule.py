"""Scheduled pipeline runs: `schedule: {every_s: 86400}` or `schedule: {cron: "0 3 * * 1"}` (UTC) in a
pipeline's production version, run by the gateway, once across replicas.

Each replica's scheduler wakes every `ml.pipelines.schedule_tick_s` and, for every pipeline whose
`production` alias points at a version with a `schedule:`, asks for the run in one transaction that
takes the pipeline's lock row first (gateway/db/generation.py `lock_key`, the pattern of drift-triggered
runs in trigger.py) and writes its claim only when it is due:

- `every_s`: the last scheduled claim of the pipeline is at least `every_s` old (the first claim comes
  as soon as the schedule is in production);
- `cron`: the newest fire time at or before now is later than the last claim's, and at most
  `catch_up_s` old (a gateway that was down at 03:00 does not run the 03:00 job at 14:00).

The replica whose claim commits runs the pipeline in a background thread (bounded by
`ml.pipelines.timeout_s`, run.py); the others see the claim and skip. Claims are ml_reports rows of kind
`schedule_claim` saying which slot, which pipeline version and which replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.db.generation import as_utc, lock_key, utcnow
from gateway.db.outage import Outage, database_unavailable
from gateway.ml.pipelines.cron import ScheduleSpec
from gateway.ml.pipelines.spec import PipelineSpec
from gateway.registry.store import VersionRecord, VersionStore

log = logging.getLogger("opsgate.ml.pipelines")
SCHEDULE_KIND = "schedule_claim"  # ml_reports.kind holds 16 characters
CRON_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
)


def replica_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def scheduled_pipelines(engine: Engine) -> list[tuple[VersionRecord, ScheduleSpec]]:
    """(production version, its schedule) of every pipeline whose production version has one."""
    store = VersionStore(engine)
    out = []
    for (_, name), aliases in store.aliases("pipeline").items():
        version = aliases.get("production")
        record = store.get("pipeline", name, version) if version is not None else None
        if record is None:
            continue
        try:
            spec = PipelineSpec.model_validate(record.spec)
        except ValueError as exc:
            log.warning("%s cannot be read (%s): its schedule does not run", record.ref, exc)
            continue
        if spec.schedule is not None:
            out.append((record, spec.schedule))
    return out


def claim_slot(
    engine: Engine, record: VersionRecord, schedule: ScheduleSpec, now: datetime
) -> datetime | None:
    """The slot this caller runs, or None: exactly one caller per slot, across processes sharing the
    database. A plain read first: a tick with nothing due takes no lock."""
    model = PipelineSpec.model_validate(record.spec).model
    with Session(engine) as session:
        if schedule.due(now, _last_slot(session, model, record.name)) is None:
            return None
    try:
        return _claim(engine, record, model, schedule, now)
    except IntegrityError:  # two replicas created the lock row at once: it exists now
        return _claim(engine, record, model, schedule, now)


def _last_slot(session: Session, model: str, pipeline: str) -> datetime | None:
    from gateway.ml.tables import MLReport

    q = (
        select(MLReport)
        .where(MLReport.name == model, MLReport.kind == SCHEDULE_KIND)
        .order_by(MLReport.id.desc())
        .limit(200)
    )
    for r in session.scalars(q):
        if r.result.get("pipeline") == pipeline:
            return as_utc(datetime.fromisoformat(r.result["slot"]))
    return None


def _claim(
    engine: Engine, record: VersionRecord, model: str, schedule: ScheduleSpec, now: datetime
) -> datetime | None:
    from gateway.ml.tables import MLReport

    lock = "ml-pipeline-schedule:" + hashlib.sha1(record.name.encode()).hexdigest()
    with engine.begin() as conn, Session(bind=conn) as session:
        lock_key(conn, lock)
        slot = schedule.due(now, _last_slot(session, model, record.name))
        if slot is None:
            return None
        session.add(
            MLReport(
                ts=now,
                name=model,
                version=record.version,
                kind=SCHEDULE_KIND,
                breached=False,
                result={
                    "pipeline": record.name,
                    "pipeline_ref": str(record.ref),
                    "slot": slot.isoformat(),
                    "schedule": schedule.model_dump(exclude_none=True),
                    "replica": replica_id(),
                },
            )
        )
        session.commit()
    return slot


class PipelineScheduler:
    """A background task of the gateway: every tick, claim and start the due scheduled runs."""

    def __init__(
        self,
        engine: Engine,
        start_run: Callable[[VersionRecord, str, str], Any],
        *,
        tick_s: float,
        busy: Callable[[str], bool] = lambda name: False,
    ) -> None:
        self.engine = engine
        self.start_run = start_run  # (record, reason, actor) -> starts the run in the background
        self.busy = busy  # a run of this pipeline is still going here: do not claim the next one yet
        self.tick_s = tick_s
        self._task: asyncio.Task[None] | None = None
        self.outage = Outage("pipeline schedule: database", log)  # one line per change of state

    def due(self, now: datetime | None = None) -> list[tuple[VersionRecord, datetime]]:
        """Blocking: the runs this replica won the claim for."""
        now = now or utcnow()
        out = []
        for record, schedule in scheduled_pipelines(self.engine):
            if self.busy(record.name):
                continue
            slot = claim_slot(self.engine, record, schedule, now)
            if slot is not None:
                out.append((record, slot))
        return out

    async def tick(self) -> list[str]:
        started = []
        for record, slot in await asyncio.to_thread(self.due):
            reason = f"schedule (slot {slot.isoformat(timespec='seconds')})"
            self.start_run(record, reason, "opsgate-scheduler")
            started.append(str(record.ref))
        return started

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="opsgate-pipeline-schedule")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                await self.tick()
            except Exception as exc:  # the next tick tries again
                if database_unavailable(exc) is None:
                    log.exception("pipeline schedule check failed; will retry")
                else:
                    self.outage.failed(exc, "no scheduled run starts until it answers")
            else:
                self.outage.recovered()
