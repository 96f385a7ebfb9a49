"""The eval store on SQLite and PostgreSQL: runs with their case results, tables back, rolling means."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import Engine, insert
from sqlalchemy.orm import Session

from gateway.db.engine import make_engine, migrate
from gateway.db.models import ArtifactVersion, OnlineEvalScore
from gateway.evaluation.online import rolling_means_from_db
from gateway.evaluation.store import get_run, list_runs, load_table, reusable_run, save_run
from tests.evaluation.helpers import NOW, run


@pytest.fixture(scope="module")
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    migrate(engine)
    yield engine
    engine.dispose()


def test_a_run_and_its_cases_round_trip(engine: Engine) -> None:
    result = run({"exact_match": [[1.0, 0.0], [None, 1.0]], "hit_at_4": [[1.0, 1.0], [0.0, 0.0]]}, repeats=2)
    result.id = "run_store_1"
    save_run(engine, result, status="failed", summary={"metrics": {}}, created_by="alice")
    stored = get_run(engine, "run_store_1")
    assert (stored.status, stored.passed, stored.cases, stored.errors, stored.created_by) == (
        "failed",
        False,
        2,
        0,
        "alice",
    )
    assert stored.label == "prompt:qa@2" and stored.target_ref == result.target.ref
    assert stored.tool_versions["ragas"] == "0.4.3" and stored.dataset_hash == "1" * 64
    table = load_table(engine, "run_store_1")
    assert table.by_case("exact_match") == {"c0": 0.5, "c1": 1.0}
    assert table.values("latency_ms") == [10.0, 10.0, 11.0, 11.0]
    assert [r.id for r in list_runs(engine, suite="qa")][:1] == ["run_store_1"]
    assert reusable_run(engine, result, kind="prompt", name="qa", version=2) == "run_store_1"
    assert reusable_run(engine, result, kind="prompt", name="qa", version=1) is None


def test_rolling_means_use_each_versions_window(engine: Engine) -> None:
    with Session(engine) as s, s.begin():
        s.add(ArtifactVersion(kind="prompt", name="web", version=1, content_hash="h" * 64, created_at=NOW,
                              created_by="t", spec={"online_eval": {"sample_rate": 1, "metrics": ["x"], "window": 2,
                                                                    "thresholds": {"x": 0.5}}}))  # fmt: skip
        rows = [
            {"request_id": f"r{i}", "ts": NOW + timedelta(seconds=i), "prompt": "web", "prompt_version": 1,
             "prompt_hash": "h" * 64, "versions": [], "metric": "x", "score": score}
            for i, score in enumerate([1.0, 0.0, 0.2, 0.4])
        ]  # fmt: skip
        s.execute(insert(OnlineEvalScore), rows)
    [row] = rolling_means_from_db(engine, prompt="web")
    assert row["mean"] == pytest.approx(0.3) and (
        row["n"],
        row["window"],
        row["total"],
        row["threshold"],
    ) == (2, 2, 4, 0.5)
