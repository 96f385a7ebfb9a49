"""Model files: hash verification (tampered file refused), the content-addressed store (old versions stay
servable after the file changes), safe loading (unsafe pickle and untrusted skops types refused)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import skops.io as sio

from gateway.errors import ConfigError
from gateway.ml.artifacts import ArtifactStore, load_estimator, verified_files
from gateway.ml.errors import ModelUnavailable
from gateway.ml.spec import ModelSpec
from gateway.ml.trust import LoadGrant, TrustList
from gateway.registry.files import load_artifact
from tests.ml.conftest import Data, write_models


@pytest.fixture
def project(tmp_path: Path, data: Data) -> Path:
    write_models(tmp_path, data)
    return tmp_path


def test_tampered_file_is_refused_and_the_store_keeps_old_versions(project: Path, tmp_path: Path) -> None:
    art = load_artifact(project, "model", project / "config/models/cancer.yaml")
    spec = art.spec
    assert isinstance(spec, ModelSpec)
    store = ArtifactStore(tmp_path / "store")
    files = verified_files(spec, art.content_hash, "model:cancer@1", art.path, project, store)
    assert files["cancer.skops"] == (project / "config/models/cancer.skops").read_bytes()
    model_file = project / "config/models/cancer.skops"
    model_file.write_bytes(model_file.read_bytes() + b"tampered")
    # the verified copy in the store still serves version 1 (rollback works after the file changed)
    assert verified_files(spec, art.content_hash, "model:cancer@1", art.path, project, store) == files
    # with no verified copy, the tampered bytes are refused
    with pytest.raises(ModelUnavailable, match="do not match the version's content hash"):
        verified_files(
            spec, art.content_hash, "model:cancer@1", art.path, project, ArtifactStore(tmp_path / "empty")
        )
    # a tampered copy in the store is refused too
    stored = store.folder(art.content_hash) / "cancer.skops"
    stored.write_bytes(b"not the model")
    with pytest.raises(ModelUnavailable):
        verified_files(spec, art.content_hash, "model:cancer@1", art.path, project, store)


def test_changed_model_file_is_a_new_hash(project: Path, data: Data) -> None:
    before = load_artifact(project, "model", project / "config/models/sugar.yaml").content_hash
    sio.dump(data.loans_model, project / "config/models/sugar.skops")
    assert load_artifact(project, "model", project / "config/models/sugar.yaml").content_hash != before


def test_a_pickle_spec_parses_but_the_spec_cannot_trust_it(project: Path) -> None:
    """`trusted: true` in a spec is accepted (older specs keep parsing) and means nothing: the operator's
    ml.trusted_models decides whether such a file loads (tests/security/test_model_code_execution.py)."""
    spec_file = project / "config/models/cancer.yaml"
    spec_file.write_text(
        spec_file.read_text().replace(
            "file: cancer.skops", "file: cancer.skops\n  format: pickle\n  trusted: true"
        )
    )
    spec = load_artifact(project, "model", spec_file).spec
    assert isinstance(spec, ModelSpec) and spec.model.format == "pickle"
    data = (project / "config/models/cancer.skops").read_bytes()
    with pytest.raises(ModelUnavailable, match=r"trusted_models: \[cancer\]") as refused:
        load_estimator(spec, data, "model:cancer@1")
    assert refused.value.code == "model_untrusted"


def test_a_retrain_command_in_a_spec_is_refused(project: Path) -> None:
    spec_file = project / "config/models/cancer.yaml"
    text = spec_file.read_text()
    assert "command: cancer_retrain" in text
    spec_file.write_text(text.replace("command: cancer_retrain", "command: [sh, -c, env]"))
    with pytest.raises(ConfigError, match=r"ml.*retrain_commands"):
        load_artifact(project, "model", spec_file)


class Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, ("echo pwned > /tmp/opsgate-pwned",))


def test_unsafe_files_are_refused(data: Data) -> None:
    spec = ModelSpec.model_validate(
        {"name": "x", "model": {"file": "x.skops"}, "inputs": {"a": {}}, "feature_order": ["a"]}
    )
    with pytest.raises(ModelUnavailable, match="is not a skops file"):
        load_estimator(spec, pickle.dumps(Evil()), "model:x@1")
    risky = sio.dumps({"model": data.cancer_model, "extra": Path("/etc")})  # a type outside skops' safe set
    with pytest.raises(ModelUnavailable, match="outside skops' safe set"):
        load_estimator(spec, risky, "model:x@1")
    # the spec's own trusted_types count for nothing; the operator's ml.trusted_types do
    vouched = spec.model_copy(
        update={"model": spec.model.model_copy(update={"trusted_types": ["pathlib.PosixPath"]})}
    )
    with pytest.raises(ModelUnavailable, match="outside skops' safe set"):
        load_estimator(vouched, risky, "model:x@1")
    operator = LoadGrant(TrustList(types=frozenset(sio.get_untrusted_types(data=risky))), approved=False)
    assert load_estimator(spec, risky, "model:x@1", operator) is not None
    assert not Path("/tmp/opsgate-pwned").exists()
    assert load_estimator(spec, sio.dumps(data.cancer_model), "model:x@1") is not None


def test_sync_stashes_model_files_so_the_version_survives_the_file_changing(
    project: Path, tmp_path: Path
) -> None:
    """`opsgate sync` copies verified model bytes into the blob store: no gateway needs to run in between."""
    from gateway.db.engine import make_engine, migrate
    from gateway.registry.blobs import BlobStore
    from gateway.registry.sync import sync
    from tests.ml.conftest import git_commit

    git_commit(project)
    engine = make_engine(f"sqlite:///{tmp_path / 'reg.db'}")
    migrate(engine)
    blobs = BlobStore(tmp_path / "blobs")
    report = sync(engine, project, actor="test", blobs=blobs)
    cancer = next(r for r in report.registered if r.kind == "model" and r.name == "cancer")
    original = (project / "config/models/cancer.skops").read_bytes()
    (project / "config/models/cancer.skops").write_bytes(b"replaced after sync")
    art_spec = ModelSpec.model_validate(cancer.spec)
    files = verified_files(art_spec, cancer.content_hash, cancer.ref, cancer.source_path, project, blobs)
    assert files["cancer.skops"] == original
    engine.dispose()
