"""`engine: {backend: dask}`: the search's cross-validation runs on a Dask cluster of two worker processes
through scikit-learn's joblib backend, and finds what the one-process run finds. The cluster's address is
the operator's (ml.pipelines.dask_scheduler), checked against the egress rules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.db.engine import make_engine, migrate
from gateway.egress import EgressConfig
from gateway.ml.pipelines.run import run_pipeline
from gateway.registry.blobs import BlobStore, blob_root
from gateway.registry.sync import sync
from gateway.settings import GatewayConfig
from tests.fakes.gateway import commit_project
from tests.ml.pipelines.conftest import credit_pipeline, write_pipeline


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        yield c


def _config(address: str, hosts: list[str]) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {"ml": {"pipelines": {"dask_scheduler": address}}, "egress": EgressConfig(hosts=hosts).model_dump()}
    )


def _project(credit_project: Path, backend: str) -> None:
    spec = credit_pipeline(engine={"backend": backend})
    spec["search"] = {"type": "grid", "params": {"C": [0.01, 1.0]}, "cv": 3, "scoring": "auc"}
    write_pipeline(credit_project, spec)
    commit_project(credit_project, backend)


def test_search_on_two_dask_workers_equals_one_process(
    credit_project: Path, tmp_path: Path, cluster: Any
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(engine)
    data_dir = tmp_path / "data"
    blobs = BlobStore(blob_root(data_dir))
    _project(credit_project, "local")
    sync(engine, credit_project, actor="t", blobs=blobs)
    local = run_pipeline(engine, credit_project, "credit@1", actor="t", data_dir=data_dir)
    _project(credit_project, "dask")
    sync(engine, credit_project, actor="t", blobs=blobs)

    address = cluster.scheduler_address
    from distributed import Client

    def executed(dask_worker: Any) -> int:
        return int(dask_worker.state.executed_count)

    with Client(address) as client:
        before = client.run(executed)
        on_dask = run_pipeline(
            engine,
            credit_project,
            "credit@2",
            actor="t",
            data_dir=data_dir,
            config=_config(address, ["127.0.0.1:*"]),
        )
        after = client.run(executed)
    workers = {w for w in after if after[w] > before.get(w, 0)}
    assert on_dask.status == "passed", on_dask.error
    assert on_dask.report["engine"] == "dask"
    assert len(workers) == 2, (before, after)  # both worker processes fitted folds
    assert on_dask.report["training"]["best_params"] == local.report["training"]["best_params"]
    assert on_dask.report["training"]["cv_score"] == pytest.approx(
        local.report["training"]["cv_score"], abs=1e-12
    )
    assert on_dask.report["metrics"]["candidate"] == pytest.approx(
        local.report["metrics"]["candidate"], abs=1e-12
    )


def test_scheduler_host_must_be_on_egress(credit_project: Path, tmp_path: Path, cluster: Any) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(engine)
    _project(credit_project, "dask")
    data_dir = tmp_path / "data"
    sync(engine, credit_project, actor="t", blobs=BlobStore(blob_root(data_dir)))
    result = run_pipeline(
        engine,
        credit_project,
        "credit",
        actor="t",
        data_dir=data_dir,
        config=_config(cluster.scheduler_address, []),
    )
    assert result.status == "error" and "egress" in (result.error or ""), result.error
    assert "dask_scheduler" in (result.error or "")
