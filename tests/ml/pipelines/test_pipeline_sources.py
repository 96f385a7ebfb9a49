"""The other sources: a SQL query on a database the operator names (read-only: a query that writes fails
and writes nothing), and the model's logged predictions joined with their feedback."""

from __future__ import annotations

import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.orm import Session

from gateway.db.engine import make_engine, migrate
from gateway.db.generation import utcnow
from gateway.ml.pipelines.run import run_pipeline
from gateway.ml.tables import MLFeedback, MLPrediction
from gateway.registry.blobs import BlobStore, blob_root
from gateway.registry.sync import sync
from gateway.settings import GatewayConfig
from tests.fakes.gateway import commit_project
from tests.ml.pipelines.conftest import DATA, credit_pipeline, write_pipeline


def _setup(project: Path, tmp_path: Path, source: dict[str, Any]) -> tuple[Any, Path]:
    write_pipeline(project, credit_pipeline(source=source))
    commit_project(project, "source")
    engine = make_engine(f"sqlite:///{tmp_path / 'opsgate.db'}")
    migrate(engine)
    data_dir = tmp_path / "data"
    report = sync(engine, project, actor="t", blobs=BlobStore(blob_root(data_dir)))
    assert not report.errors, [e.message for e in report.errors]
    return engine, data_dir


def _config(databases: dict[str, str]) -> GatewayConfig:
    return GatewayConfig.model_validate({"ml": {"pipelines": {"databases": databases}}})


def test_sql_source_reads_the_operators_database(
    credit_project: Path, tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    warehouse = create_engine(pg_url)
    pd.read_csv(DATA).to_sql("credit", warehouse, index=False)
    # the operator's role: it may read (and, to show the read-only transaction, delete) the table, nothing
    # more; a superuser could read the server's files and is refused (tests/security/test_pipeline_sql_server_files.py)
    role = f"opsgate_reader_{secrets.token_hex(4)}"
    database = pg_url.rsplit("/", 1)[1]
    with warehouse.begin() as conn:
        conn.execute(text(f'CREATE ROLE "{role}" LOGIN'))
        conn.execute(text(f'GRANT CONNECT ON DATABASE "{database}" TO "{role}"'))
        conn.execute(text(f'GRANT SELECT, DELETE ON credit TO "{role}"'))
    reader = make_url(pg_url).set(username=role, password=None).render_as_string(hide_password=False)
    monkeypatch.setenv("WAREHOUSE_URL", reader)
    try:
        _sql_source(credit_project, tmp_path, warehouse)
    finally:
        with warehouse.begin() as conn:
            conn.execute(text(f'REVOKE ALL ON credit FROM "{role}"'))
            conn.execute(text(f'REVOKE ALL ON DATABASE "{database}" FROM "{role}"'))
            conn.execute(text(f'DROP ROLE "{role}"'))
        warehouse.dispose()


def _sql_source(credit_project: Path, tmp_path: Path, warehouse: Any) -> None:
    source = {"sql": "SELECT * FROM credit ORDER BY 1", "database": "warehouse"}
    engine, data_dir = _setup(credit_project, tmp_path, source)
    result = run_pipeline(
        engine,
        credit_project,
        "credit",
        actor="t",
        data_dir=data_dir,
        config=_config({"warehouse": "WAREHOUSE_URL"}),
    )
    assert result.status == "passed", result.error
    assert result.report["data"]["rows"] == 1000 and result.report["data"]["source"] == "sql on warehouse"
    assert result.report["data"]["hash"].startswith("sha256:")

    # a database the operator did not name is refused; so is a query that writes (read-only transaction)
    unnamed = run_pipeline(engine, credit_project, "credit", actor="t", data_dir=data_dir, config=_config({}))
    assert unnamed.status == "error" and "not one of the operator's ml.pipelines.databases" in (
        unnamed.error or ""
    )

    writing = {
        "sql": "WITH gone AS (DELETE FROM credit RETURNING *) SELECT * FROM gone",
        "database": "warehouse",
    }
    write_pipeline(credit_project, credit_pipeline(source=writing))
    commit_project(credit_project, "a query that deletes")
    sync(engine, credit_project, actor="t", blobs=BlobStore(blob_root(data_dir)))
    attack = run_pipeline(
        engine,
        credit_project,
        "credit@latest",
        actor="t",
        data_dir=data_dir,
        config=_config({"warehouse": "WAREHOUSE_URL"}),
    )
    assert attack.status == "error" and "read-only" in (attack.error or ""), attack.error
    with warehouse.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM credit")).scalar() == 1000


def test_feedback_source_trains_on_logged_predictions(credit_project: Path, tmp_path: Path) -> None:
    engine, data_dir = _setup(credit_project, tmp_path, {"feedback": {"days": 7}})
    frame = pd.read_csv(DATA)
    now = utcnow()
    with Session(engine) as session:
        for i, row in enumerate(frame.to_dict("records")):
            label = row.pop("risk")
            pid = f"r{i}:0"
            session.add(
                MLPrediction(
                    id=pid, request_id=f"r{i}", ts=now - timedelta(minutes=i), name="credit", version=1,
                    content_hash="h", inputs=row, label=1, score=0.5,
                )
            )  # fmt: skip
            if i % 10:  # 9 in 10 predictions got their ground truth
                session.add(MLFeedback(prediction_id=pid, name="credit", ts=now, label=label))
        session.add(  # an old prediction outside the window
            MLPrediction(id="old:0", request_id="old", ts=now - timedelta(days=30), name="credit", version=1,
                         content_hash="h", inputs=frame.iloc[0].to_dict(), label=1, score=0.5)
        )  # fmt: skip
        session.add(MLFeedback(prediction_id="old:0", name="credit", ts=now, label=1))
        session.commit()
    result = run_pipeline(engine, credit_project, "credit", actor="t", data_dir=data_dir)
    assert result.status == "passed", result.error
    assert result.report["data"]["rows"] == 900
    assert result.report["cleaning"]["rows_in"] == 900
