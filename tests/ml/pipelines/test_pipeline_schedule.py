"""Scheduled pipeline runs and the run time limit.

- Two gateways on one PostgreSQL database, both looking for due runs every 0.2 s: a pipeline scheduled
  `every_s: 600` runs exactly once (one claim, one run, one candidate), by one of them.
- Claims race: six replicas claim the same slot at the same instant, for interval and cron schedules;
  one wins each slot.
- Cron expressions: fields, ranges, steps, lists, Sunday as 0 or 7, the day-of-month / day-of-week rule,
  catch-up window; bad expressions refused at load time.
- `ml.pipelines.timeout_s`: a search that outlives it is stopped (its process killed) during training,
  registers nothing and says so.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gateway.db.engine import make_engine, migrate
from gateway.db.generation import utcnow
from gateway.ml.pipelines.cron import Cron, ScheduleSpec
from gateway.ml.pipelines.schedule import claim_slot
from gateway.ml.pipelines.spec import PipelineSpec
from gateway.ml.tables import MLReport
from gateway.registry.blobs import BlobStore, blob_root
from gateway.registry.store import VersionRecord, VersionStore
from gateway.registry.sync import sync
from gateway.settings import GatewayConfig
from tests.conftest import GatewayFactory
from tests.fakes.gateway import FAST_GATEWAY_YAML, commit_project
from tests.ml.pipelines.conftest import credit_pipeline, write_pipeline


def _reports(engine: Any, kind: str) -> list[dict[str, Any]]:
    with Session(engine) as session:
        return [r.result for r in session.scalars(select(MLReport).where(MLReport.kind == kind))]


def test_a_schedule_runs_once_across_two_gateways_on_postgres(
    credit_project: Path, gateway_factory: GatewayFactory, new_pg_database: Callable[[], str]
) -> None:
    # a database of its own: the session's shared one (pg_url) holds other modules' registries (an
    # aliased index no replica here can open kept the first gateway from ever being ready)
    pg_url = new_pg_database()
    write_pipeline(credit_project, credit_pipeline(schedule={"every_s": 600}))
    (credit_project / "config" / "gateway.yaml").write_text(
        FAST_GATEWAY_YAML + "ml:\n  pipelines:\n    schedule_tick_s: 0.2\n", encoding="utf-8"
    )
    commit_project(credit_project, "scheduled pipeline")
    first = gateway_factory(credit_project, database_url=pg_url)  # registers pipeline:credit@1 as production
    second = gateway_factory(credit_project, database_url=pg_url, admin_key=first.admin_key)
    engine = make_engine(pg_url)
    deadline = time.monotonic() + 60
    while not _reports(engine, "pipeline_run") and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2)  # ten more ticks of each replica: nothing more may start
    claims = _reports(engine, "schedule_claim")
    runs = _reports(engine, "pipeline_run")
    assert len(claims) == 1, claims
    assert claims[0]["pipeline_ref"].startswith("pipeline:credit@1") and claims[0]["schedule"] == {
        "every_s": 600.0,
        "catch_up_s": 600.0,
    }
    assert len(runs) == 1 and runs[0]["status"] == "passed", runs
    assert runs[0]["reason"].startswith("schedule (slot ")
    versions = VersionStore(engine).versions("model", "credit")
    assert len(versions) == 1 and versions[0].created_by == "opsgate-scheduler"
    assert first.running and second.running
    engine.dispose()


def _record(name: str) -> VersionRecord:
    return VersionRecord(
        "pipeline", name, 1, "h", credit_pipeline(name=name), None, None, None, None, False, utcnow(), "t"
    )


@pytest.mark.parametrize("schedule", [{"every_s": 1}, {"cron": "* * * * *"}], ids=["every_s", "cron"])
def test_claims_race_and_one_wins_each_slot(db_url: str, schedule: dict[str, Any]) -> None:
    migrate(make_engine(db_url))
    spec = ScheduleSpec.model_validate(schedule)
    record = _record(f"race{len(schedule)}{'cron' in schedule}")
    replicas = 6
    start = datetime(2026, 3, 2, 3, 0, 5, tzinfo=UTC)
    for round_, now in enumerate([start, start + timedelta(seconds=1), start + timedelta(minutes=1)]):
        engines = [make_engine(db_url) for _ in range(replicas)]
        barrier = threading.Barrier(replicas)
        wins: list[bool] = []

        def replica(
            engine: Any, now: datetime = now, barrier: threading.Barrier = barrier, wins: list[bool] = wins
        ) -> None:
            with engine.connect():
                pass
            barrier.wait()
            wins.append(claim_slot(engine, record, spec, now) is not None)

        threads = [threading.Thread(target=replica, args=(e,)) for e in engines]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for e in engines:
            e.dispose()
        # interval: each round is due again; cron: the second round is inside the same minute
        want = 0 if ("cron" in schedule and round_ == 1) else 1
        assert sorted(wins) == [False] * (replicas - want) + [True] * want, (round_, wins)


def test_cron_expressions() -> None:
    t = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)  # a Monday
    assert Cron("0 3 * * 1").matches(t) and not Cron("0 3 * * 2").matches(t)
    assert Cron("*/15 1-5 * * *").matches(t) and not Cron("*/15 4-5 * * *").matches(t)
    assert Cron("0,30 3 1,2 3 *").matches(t)
    sunday = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert Cron("0 12 * * 0").matches(sunday) and Cron("0 12 * * 7").matches(sunday)
    # both day fields restricted: either one fires (the 15th, or any Monday)
    assert Cron("0 3 15 * 1").matches(t) and not Cron("0 3 15 * 2").matches(t)
    daily = ScheduleSpec(cron="0 3 * * *")
    assert daily.due(t + timedelta(minutes=5), None) == t
    assert daily.due(t + timedelta(minutes=5), t) is None  # that slot ran
    assert daily.due(t + timedelta(hours=11), None) is None  # missed by more than catch_up_s: skipped
    every = ScheduleSpec(every_s=60)
    assert every.due(t, None) == t and every.due(t, t - timedelta(seconds=30)) is None
    for bad in ("0 3 * *", "61 * * * *", "0 3 * * 8", "a * * * *", "*/0 * * * *", "5-1 * * * *"):
        with pytest.raises(ValueError):
            Cron(bad)
    with pytest.raises(ValidationError, match="exactly one"):
        ScheduleSpec(every_s=60, cron="0 3 * * *")
    with pytest.raises(ValidationError, match="cron"):
        PipelineSpec.model_validate(credit_pipeline(schedule={"cron": "0 25 * * *"}))


def test_a_run_over_the_time_limit_is_stopped_and_registers_nothing(
    credit_project: Path, tmp_path: Path
) -> None:
    from gateway.ml.pipelines.run import run_pipeline

    big_search = {
        "type": "grid",
        "params": {"C": [0.01 * i for i in range(1, 101)]},
        "cv": 10,
        "scoring": "auc",
    }
    write_pipeline(credit_project, credit_pipeline(search=big_search))
    commit_project(credit_project, "a search of 1,000 fits")
    engine = make_engine(f"sqlite:///{tmp_path / 'opsgate.db'}")
    migrate(engine)
    data_dir = tmp_path / "data"
    assert not sync(engine, credit_project, actor="tester", blobs=BlobStore(blob_root(data_dir))).errors
    config = GatewayConfig.model_validate({"ml": {"pipelines": {"timeout_s": 4}}})
    started = time.monotonic()
    result = run_pipeline(engine, credit_project, "credit", actor="tester", data_dir=data_dir, config=config)
    took = time.monotonic() - started
    assert result.status == "timeout", (result.status, result.error)
    assert result.error is not None and "ml.pipelines.timeout_s (4 s), during train" in result.error
    assert "nothing registered" in result.error
    assert result.candidate is None and VersionStore(engine).versions("model", "credit") == []
    assert 4 <= took < 9, took  # stopped at the limit, not after the search (1,000 fits)
    assert result.report["status"] == "timeout" and result.report["stage"] == "train"
    import multiprocessing

    assert not [p for p in multiprocessing.active_children() if p.name.startswith("opsgate-pipeline")]
    with Session(engine) as session:
        stored = session.scalar(
            select(func.count()).select_from(MLReport).where(MLReport.kind == "pipeline_run")
        )
    assert stored == 1  # the run's report says it timed out
