"""config/pipelines/breast_cancer.yaml, the pipeline the README shows, makes the demo model: run on the
repo's data/breast_cancer.csv it passes its gates against the demo model in production, and its candidate
predicts exactly what config/models/breast_cancer.skops predicts, on every row."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import skops.io as sio

from gateway.db.engine import make_engine, migrate
from gateway.ml.artifacts import ArtifactStore, load_estimator
from gateway.ml.pipelines.run import run_pipeline
from gateway.ml.spec import stored_spec
from gateway.registry.blobs import BlobStore, blob_root
from gateway.registry.store import VersionStore
from gateway.registry.sync import sync
from tests.fakes.gateway import REPO, commit_project


def test_demo_pipeline_makes_the_demo_model(make_project: Any, tmp_path: Path) -> None:
    project: Path = make_project()
    shutil.copytree(REPO / "config" / "models", project / "config" / "models")
    shutil.copytree(REPO / "config" / "pipelines", project / "config" / "pipelines")
    shutil.copytree(REPO / "data", project / "data")
    commit_project(project, "demo model and its pipeline")
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(engine)
    data_dir = tmp_path / "data"
    report = sync(engine, project, actor="t", blobs=BlobStore(blob_root(data_dir)))
    assert not report.errors and report.bootstrapped  # production: the demo model, version 1

    result = run_pipeline(engine, project, "breast_cancer", actor="t", data_dir=data_dir)
    assert result.status == "passed", (result.error, result.failed_gates)
    metrics = result.report["metrics"]
    assert metrics["production"]["ref"].startswith("model:breast_cancer@1")
    assert metrics["candidate"] == metrics["production"]["metrics"]  # the same model, measured the same way

    candidate = VersionStore(engine).get("model", "breast_cancer", 2)
    assert candidate is not None and str(candidate.ref) == result.candidate
    spec = stored_spec(candidate.spec, str(candidate.ref))
    files = ArtifactStore(blob_root(data_dir)).read(candidate.content_hash, spec.referenced_files())
    assert files is not None
    made = load_estimator(spec, files[spec.model.file], str(candidate.ref))
    demo = sio.load(REPO / "config/models/breast_cancer.skops")
    rows = pd.read_csv(REPO / "data/breast_cancer.csv").drop(columns=["diagnosis"])
    assert list(made.classes_) == list(demo.classes_)
    np.testing.assert_array_equal(made.predict(rows), demo.predict(rows))
    np.testing.assert_allclose(made.predict_proba(rows), demo.predict_proba(rows), rtol=0, atol=1e-12)
