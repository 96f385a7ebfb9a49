"""Several gateway replicas run the ML monitor on one database: a breach is alerted once and retraining
fires once, not once per replica. Threads with their own engines stand in for the replicas (each
`Monitor._record` is one transaction, as in a replica), on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gateway.db.engine import make_engine, migrate
from gateway.ml.monitor import Monitor
from gateway.ml.spec import RetrainSpec
from gateway.ml.tables import MLReport

REPLICAS = 6


def _found(breached: bool) -> dict[str, Any]:
    return {
        "drift": {"status": "ok", "breached": breached},
        "fairness": {"status": "ok", "breached": False},
        "accuracy": {"status": "insufficient_data"},
    }


def _judge_at_once(url: str, served: Any, found: dict[str, Any]) -> list[tuple[list[str], bool]]:
    engines = [make_engine(url) for _ in range(REPLICAS)]
    barrier = threading.Barrier(REPLICAS)
    results: list[tuple[list[str], bool]] = []
    errors: list[BaseException] = []

    def replica(engine: Any) -> None:
        monitor = Monitor(engine, project_dir=None)  # type: ignore[arg-type]
        with engine.connect():  # connected before the start line, so the replicas really race
            pass
        barrier.wait()
        try:
            results.append(monitor._record(served, found))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=replica, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for e in engines:
        e.dispose()
    assert not errors, errors
    assert len(results) == REPLICAS
    return results


def test_a_breach_is_alerted_once_across_replicas(db_url: str) -> None:
    migrate(make_engine(db_url))
    served = SimpleNamespace(
        name="loans", version=3, spec=SimpleNamespace(retrain=RetrainSpec(on=["drift"], cooldown_s=3600))
    )
    first = _judge_at_once(db_url, served, _found(True))
    assert sum(kinds == ["drift"] for kinds, _ in first) == 1, first
    assert sum(kinds == [] for kinds, _ in first) == REPLICAS - 1
    assert sum(due for _, due in first) == 1  # one retraining trigger, not one per replica
    again = _judge_at_once(db_url, served, _found(True))  # still breached: nothing new to say
    assert all(kinds == [] and not due for kinds, due in again), again
    _judge_at_once(db_url, served, _found(False))  # recovered ...
    third = _judge_at_once(db_url, served, _found(True))  # ... and breached again: one alert
    assert sum(kinds == ["drift"] for kinds, _ in third) == 1, third
    with Session(make_engine(db_url)) as session:
        reports = session.scalar(
            select(func.count()).select_from(MLReport).where(MLReport.kind == "drift", MLReport.version == 3)
        )
        retrains = session.scalar(
            select(func.count()).select_from(MLReport).where(MLReport.kind == "retrain")
        )
    assert reports == 4 * REPLICAS  # every judgement is kept: 4 rounds of 6 replicas
    assert retrains == 1  # cooldown: the breach after recovery is within the hour
