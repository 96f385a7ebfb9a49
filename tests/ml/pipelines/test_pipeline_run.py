"""A pipeline from raw file to registered candidate: sync registers the pipeline file like any artifact,
`run` cleans (with counts), trains, validates, registers a model version the gateway can load; its
metrics equal a plain scikit-learn run of the same steps; a failing gate registers nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from gateway.db.engine import make_engine, migrate
from gateway.errors import ConfigError
from gateway.ml.pipelines.run import run_pipeline
from gateway.registry.blobs import BlobStore, blob_root
from gateway.registry.files import load_artifact
from gateway.registry.store import VersionStore
from gateway.registry.sync import sync
from tests.fakes.gateway import commit_project
from tests.ml.pipelines.conftest import CATEGORIES, DATA, NUMBERS, credit_pipeline, write_pipeline


def _engine(tmp_path: Path) -> Any:
    engine = make_engine(f"sqlite:///{tmp_path / 'opsgate.db'}")
    migrate(engine)
    return engine


def _sync(engine: Any, project: Path, data_dir: Path) -> Any:
    report = sync(engine, project, actor="tester", blobs=BlobStore(blob_root(data_dir)))
    assert not report.errors, [e.message for e in report.errors]
    return report


def _plain_sklearn(c_values: list[float]) -> dict[str, float]:
    """The same steps written by hand with scikit-learn, no opsgate code."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
    from sklearn.model_selection import GridSearchCV, train_test_split
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame = pd.read_csv(DATA)
    frame["age"] = frame["age"].clip(upper=70)  # cleaning: max -> fix
    features = [
        "job",
        "housing",
        "saving_accounts",
        "checking_account",
        "credit_amount",
        "duration",
        "purpose",
        "age",
    ]
    x, y = frame[features], frame["risk"]
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=7, stratify=y)
    prep = ColumnTransformer(
        [("c", OneHotEncoder(handle_unknown="ignore"), CATEGORIES), ("n", StandardScaler(), NUMBERS)],
        remainder="passthrough",
    )
    pipe = Pipeline([("prepare", prep), ("model", LogisticRegression(max_iter=2000))])
    search = GridSearchCV(pipe, {"model__C": c_values}, cv=3, scoring="roc_auc").fit(x_train, y_train)
    pred = search.predict(x_test)
    proba = search.predict_proba(x_test)[:, list(search.classes_).index(1)]
    return {
        "auc": roc_auc_score(y_test == 1, proba),
        "accuracy": accuracy_score(y_test, pred),
        "f1": f1_score(y_test, pred, pos_label=1),
    }


def test_raw_file_to_registered_candidate(credit_project: Path, tmp_path: Path) -> None:
    engine, data_dir = _engine(tmp_path), tmp_path / "data"
    report = _sync(engine, credit_project, data_dir)
    pipeline = next(r for r in report.registered if r.kind == "pipeline")
    assert pipeline.name == "credit" and pipeline.git_commit  # versioned, content-hashed, from git

    result = run_pipeline(engine, credit_project, "credit", actor="tester", data_dir=data_dir)
    assert result.status == "passed", (result.error, result.failed_gates)
    cleaning = result.report["cleaning"]
    assert cleaning["rows_in"] == 1000 and cleaning["rows_out"] == 1000
    assert cleaning["rules"]["max"] == {"dropped": 0, "fixed": int((pd.read_csv(DATA)["age"] > 70).sum())}

    expected = _plain_sklearn([0.1, 1.0])
    for metric, value in expected.items():
        assert result.report["metrics"]["candidate"][metric] == pytest.approx(value, abs=1e-12), metric

    versions = VersionStore(engine).versions("model", "credit")
    assert [str(v.ref) for v in versions] == [result.candidate]
    candidate = versions[0]
    assert f"pipeline:credit@{pipeline.version}" in candidate.spec["tags"]
    data_hash = result.report["lineage"]["data_hash"]
    assert data_hash.startswith("sha256:") and f"data:{data_hash[:23]}" in candidate.spec["tags"]
    aliases = VersionStore(engine).aliases("model", "credit")[("model", "credit")]
    assert set(aliases) == {"latest"}  # a candidate: no protected alias moved

    # the gateway loads it from the model store (skops, content hash checked) and it scores a row
    from gateway.ml.artifacts import ArtifactStore
    from gateway.ml.service import load_served
    from gateway.ml.spec import stored_spec

    spec = stored_spec(candidate.spec, str(candidate.ref))
    assert spec.model.format == "skops"
    served = load_served(candidate, spec, credit_project, ArtifactStore(blob_root(data_dir)))
    row = pd.read_csv(DATA).drop(columns=["risk"]).iloc[0].to_dict()
    outputs = served.predict([{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}])
    assert outputs is not None

    # the report compares with production (none yet) and is written as JSON and HTML
    assert any(p.endswith("report.html") for p in result.report_paths)
    assert "auc" in Path(result.report_paths[1]).read_text()


def test_second_run_compares_with_production(credit_project: Path, tmp_path: Path) -> None:
    from gateway.registry import audit
    from gateway.registry.store import set_alias

    engine, data_dir = _engine(tmp_path), tmp_path / "data"
    _sync(engine, credit_project, data_dir)
    first = run_pipeline(engine, credit_project, "credit", actor="tester", data_dir=data_dir)
    assert first.status == "passed"

    def point(session: Any) -> None:
        set_alias(
            session,
            kind="model",
            name="credit",
            alias="production",
            version=1,
            actor="t",
            action="alias.set",
            reason="test",
        )

    audit.write_transaction(engine, point)
    # a worse model (one nearest neighbour): production beats it by more than the gate allows
    spec = credit_pipeline(
        search=None, estimator={"name": "KNeighborsClassifier", "params": {"n_neighbors": 1}}
    )
    write_pipeline(credit_project, spec)
    commit_project(credit_project, "weaker")
    _sync(engine, credit_project, data_dir)
    # the first sync was the bootstrap (production -> pipeline version 1): run the new version by alias
    second = run_pipeline(engine, credit_project, "credit@latest", actor="tester", data_dir=data_dir)
    assert second.pipeline.startswith("pipeline:credit@2")
    production = second.report["metrics"]["production"]
    assert production["ref"].startswith("model:credit@1")
    assert production["metrics"]["auc"] == pytest.approx(first.report["metrics"]["candidate"]["auc"])
    assert second.status == "failed", second.report["gates"]
    assert any("worse than production" in g for g in second.failed_gates), second.failed_gates
    assert len(VersionStore(engine).versions("model", "credit")) == 1  # nothing registered


def test_failing_gate_registers_nothing(credit_project: Path, tmp_path: Path) -> None:
    engine, data_dir = _engine(tmp_path), tmp_path / "data"
    spec = credit_pipeline()
    spec["validation"]["gates"] = [{"metric": "auc", "min": 0.99}]
    write_pipeline(credit_project, spec)
    commit_project(credit_project, "strict gate")
    _sync(engine, credit_project, data_dir)
    result = run_pipeline(engine, credit_project, "credit", actor="tester", data_dir=data_dir)
    assert result.status == "failed" and result.candidate is None
    assert result.failed_gates and result.failed_gates[0].startswith("auc >= 0.99")
    assert VersionStore(engine).versions("model", "credit") == []


def test_fairness_bounds_gate(credit_project: Path, tmp_path: Path) -> None:
    engine, data_dir = _engine(tmp_path), tmp_path / "data"
    spec = credit_pipeline()
    spec["validation"]["fairness"] = True
    spec["produces"]["fairness"] = {
        "protected": ["sex"],
        "favourable": 1,
        "min_group_size": 20,
        "disparate_impact_min": 0.999,
        "parity_max_diff": 0.001,
    }
    write_pipeline(credit_project, spec)
    commit_project(credit_project, "tight fairness")
    _sync(engine, credit_project, data_dir)
    result = run_pipeline(engine, credit_project, "credit", actor="tester", data_dir=data_dir)
    assert result.status == "failed", result.report.get("fairness")
    assert any(g.startswith("fairness: sex") for g in result.failed_gates)
    assert VersionStore(engine).versions("model", "credit") == []


def test_cleaning_drops_and_counts_per_rule(credit_project: Path, tmp_path: Path) -> None:
    engine, data_dir = _engine(tmp_path), tmp_path / "data"
    frame = pd.read_csv(DATA)
    frame.loc[0:2, "housing"] = "castle"  # categories -> drop
    frame.loc[3, "credit_amount"] = -5  # min -> drop
    frame.loc[4, "duration"] = None  # required -> drop
    frame.loc[5, "risk"] = None  # no label -> drop
    frame.to_csv(credit_project / "data" / "german_credit.csv", index=False)
    commit_project(credit_project, "dirty data")
    _sync(engine, credit_project, data_dir)
    result = run_pipeline(engine, credit_project, "credit", actor="tester", data_dir=data_dir)
    rules = result.report["cleaning"]["rules"]
    assert rules["categories"]["dropped"] == 3
    assert rules["min"]["dropped"] == 1
    assert rules["required"]["dropped"] == 1
    assert rules["missing_target"]["dropped"] == 1
    assert result.report["cleaning"]["rows_out"] == 994
    assert result.report["cleaning"]["by_field"]["housing:categories"]["dropped"] == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"estimator": {"name": "os.system", "params": {}}},
            "estimator.name: 'os.system' is not an allowed estimator",
        ),
        (
            {"estimator": {"name": "LogisticRegression", "params": {"penalty": "nonsense"}}},
            "LogisticRegression",
        ),
        ({"source": {"file": "../secrets.csv"}}, "source.file"),
        ({"source": {"sql": "DELETE FROM api_keys", "database": "gateway"}}, "must be a SELECT"),
        (
            {"search": {"type": "grid", "params": {"Cee": [1]}}},
            "'Cee' is not a parameter of LogisticRegression",
        ),
    ],
)
def test_bad_pipeline_files_are_refused_with_file_and_line(
    credit_project: Path, change: dict[str, Any], message: str
) -> None:
    spec = credit_pipeline(**change)
    write_pipeline(credit_project, spec)
    with pytest.raises(ConfigError) as info:
        load_artifact(credit_project, "pipeline", credit_project / "config/pipelines/credit.yaml")
    text = str(info.value)
    assert (
        text.startswith("config/pipelines/credit.yaml:")
        and message.rsplit(": Value error, ", maxsplit=1)[-1] in text
    ), text


def test_transformer_by_import_path_is_refused(credit_project: Path) -> None:
    spec = credit_pipeline()
    spec["features"][0]["transformer"] = "sklearn.preprocessing.FunctionTransformer"
    write_pipeline(credit_project, spec)
    with pytest.raises(ConfigError, match="is not an allowed transformer") as info:
        load_artifact(credit_project, "pipeline", credit_project / "config/pipelines/credit.yaml")
    lines = (credit_project / "config/pipelines/credit.yaml").read_text().splitlines()
    assert "transformer: sklearn.preprocessing.FunctionTransformer" in lines[info.value.line - 1]
