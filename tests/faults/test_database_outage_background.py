"""The gateway's background work through a database outage (a throwaway PostgreSQL, stopped by the test):
the pipeline scheduler (ticking every 0.2 s), the ML monitor, the alert engine and the rollout evaluator
keep running, say so in one log line when the database goes, one when it is back, never a traceback per
tick; once it is back they carry on (the scheduled run is claimed and passes)."""

from __future__ import annotations

import shutil
import time

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.db.engine import make_engine
from gateway.ml.tables import MLReport
from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import FAST_GATEWAY_YAML, commit_project
from tests.fakes.services import ThrowawayPostgres
from tests.ml.pipelines.conftest import DATA, credit_pipeline, write_pipeline


def test_background_work_says_once_that_the_database_is_away_and_carries_on(
    project_factory: ProjectFactory, gateway_factory: GatewayFactory
) -> None:
    gateway_yaml = (
        FAST_GATEWAY_YAML + "ml:\n  monitor_interval_s: 0.2\n  pipelines:\n    schedule_tick_s: 0.2\n"
    )
    project = project_factory({}, files={"config/gateway.yaml": gateway_yaml})
    (project / "data").mkdir()
    shutil.copy(DATA, project / "data" / "german_credit.csv")
    write_pipeline(project, credit_pipeline(schedule={"every_s": 600}))
    commit_project(project, "a scheduled pipeline")
    postgres = ThrowawayPostgres().init()
    try:
        gw = gateway_factory(project, database_url=postgres.url)
        postgres.stop()
        time.sleep(4)  # 20 ticks of the scheduler and of the ML monitor
        postgres.start()
        engine = make_engine(postgres.url)
        deadline = time.monotonic() + 90
        runs: list[dict[str, object]] = []
        while time.monotonic() < deadline and not runs:
            with Session(engine) as session:
                found = session.scalars(select(MLReport).where(MLReport.kind == "pipeline_run"))
                runs = [r.result for r in found]
            time.sleep(0.3)
        engine.dispose()
        assert runs and runs[0]["status"] == "passed", runs
        time.sleep(1)
        gw.stop()
        out = gw.output()
    finally:
        postgres.destroy()
    assert "Traceback" not in out, out[-4000:]
    assert out.count("pipeline schedule: database unavailable") == 1, out[-4000:]
    assert "pipeline schedule: database back after" in out
