"""A drift breach of a model starts its (approved) pipeline exactly once across replicas: two replicas'
monitors judge the same real drift at the same moment; one claims the run, the other skips; a second
breach inside `min_interval_s` starts nothing. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gateway.db.engine import make_engine, migrate
from gateway.db.generation import utcnow
from gateway.ml.artifacts import ArtifactStore
from gateway.ml.monitor import Monitor
from gateway.ml.pipelines.run import run_pipeline
from gateway.ml.service import load_served
from gateway.ml.spec import stored_spec
from gateway.ml.tables import MLPrediction, MLReport
from gateway.registry.blobs import BlobStore, blob_root
from gateway.registry.store import VersionStore
from gateway.registry.sync import sync
from tests.fakes.gateway import commit_project
from tests.ml.pipelines.conftest import DATA, credit_pipeline, write_pipeline

REPLICAS = 2


def _drifted_predictions(engine: Any, name: str, version: int, content_hash: str) -> None:
    frame = pd.read_csv(DATA).drop(columns=["risk"]).head(300)
    frame["credit_amount"] = frame["credit_amount"] * 8  # far outside the training data
    frame["duration"] = frame["duration"] * 3
    now = utcnow()
    with Session(engine) as session:
        for i, row in enumerate(frame.to_dict("records")):
            session.add(
                MLPrediction(
                    id=f"req{i}:0",
                    request_id=f"req{i}",
                    ts=now - timedelta(seconds=i),
                    name=name,
                    version=version,
                    content_hash=content_hash,
                    inputs={k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()},
                    label=1,
                    score=0.7,
                )
            )
        session.commit()


def _replicas_judge(url: str, project: Path, data_dir: Path, served: Any) -> list[dict[str, Any]]:
    barrier = threading.Barrier(REPLICAS)
    found: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    async def deliver(kind: str, payload: dict[str, Any]) -> None:
        return None

    def replica() -> None:
        engine = make_engine(url)
        monitor = Monitor(engine, project, data_dir=data_dir)
        with engine.connect():
            pass

        async def judge() -> dict[str, Any]:
            barrier.wait()
            result = await monitor.check(served, deliver)
            assert monitor.pipelines is not None
            await monitor.pipelines.drain()
            return result

        try:
            found.append(asyncio.run(judge()))
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=replica) for _ in range(REPLICAS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    return found


def _count(engine: Any, kind: str) -> int:
    with Session(engine) as session:
        return int(
            session.scalar(select(func.count()).select_from(MLReport).where(MLReport.kind == kind)) or 0
        )


def test_drift_breach_triggers_one_run_across_replicas(
    credit_project: Path, db_url: str, tmp_path: Path
) -> None:
    spec = credit_pipeline(trigger={"on": ["drift"], "min_interval_s": 3600})
    spec["produces"]["drift"] = {"min_rows": 50, "window": 300, "columns": ["credit_amount", "duration"]}
    write_pipeline(credit_project, spec)
    commit_project(credit_project, "triggered pipeline")
    engine = make_engine(db_url)
    migrate(engine)
    data_dir = tmp_path / "data"
    report = sync(engine, credit_project, actor="tester", blobs=BlobStore(blob_root(data_dir)))
    assert not report.errors and report.bootstrapped  # production -> pipeline:credit@1 (approved)

    first = run_pipeline(engine, credit_project, "credit", actor="tester", data_dir=data_dir)
    assert first.status == "passed", first.error
    record = VersionStore(engine).versions("model", "credit")[0]
    served = load_served(
        record, stored_spec(record.spec, str(record.ref)), credit_project, ArtifactStore(blob_root(data_dir))
    )
    _drifted_predictions(engine, "credit", record.version, record.content_hash)

    found = _replicas_judge(db_url, credit_project, data_dir, served)
    assert all(f["drift"]["breached"] for f in found), [f["drift"] for f in found]
    started = [f["pipelines"] for f in found if f.get("pipelines")]
    assert len(started) == 1 and started[0][0]["pipeline"].startswith("pipeline:credit@1"), found
    assert _count(engine, "pipeline_trigger") == 1
    assert _count(engine, "pipeline_run") == 2  # by hand, then once by the breach
    with Session(engine) as session:
        runs = [r.result for r in session.scalars(select(MLReport).where(MLReport.kind == "pipeline_run"))]
    triggered = [r for r in runs if r["reason"].startswith("drift breach of model:credit@1")]
    assert len(triggered) == 1 and triggered[0]["status"] == "passed"
    assert len(VersionStore(engine).versions("model", "credit")) == 2  # the triggered candidate

    again = _replicas_judge(db_url, credit_project, data_dir, served)  # still drifting, inside the interval
    assert not any(f.get("pipelines") for f in again)
    assert _count(engine, "pipeline_trigger") == 1 and _count(engine, "pipeline_run") == 2


def test_claims_race_and_one_wins(db_url: str) -> None:
    """Six replicas claim the same triggered run at the same instant: one wins, in every round."""
    from gateway.ml.pipelines.spec import PipelineSpec
    from gateway.ml.pipelines.trigger import claim
    from gateway.registry.store import VersionRecord

    migrate(make_engine(db_url))
    replicas = 6
    for round_ in range(3):
        # a pipeline of its own per round, with an interval no loaded machine outlasts: a loser that came
        # more than min_interval_s after the winner's claim would rightly win the next interval
        name = f"race{round_}"
        spec = PipelineSpec.model_validate(
            credit_pipeline(name=name, trigger={"on": ["drift"], "min_interval_s": 600})
        )
        record = VersionRecord("pipeline", name, 1, "h", {}, None, None, None, None, False, utcnow(), "t")
        engines = [make_engine(db_url) for _ in range(replicas)]
        barrier = threading.Barrier(replicas)
        wins: list[bool] = []

        def replica(
            engine: Any, barrier: threading.Barrier, wins: list[bool], record: Any = record, spec: Any = spec
        ) -> None:
            with engine.connect():
                pass
            barrier.wait()
            wins.append(claim(engine, record, spec, ["drift"], "model:credit@1"))

        threads = [threading.Thread(target=replica, args=(e, barrier, wins)) for e in engines]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for e in engines:
            e.dispose()
        assert sorted(wins) == [False] * (replicas - 1) + [True], (round_, wins)
