"""Issue 11 (8a) retried through training pipelines: a candidate model registered by a pipeline run named
only the run's trigger as its author (`opsgate-scheduler`, `opsgate-monitor`, or `alice@example.com (key
key_...)`, which matched no principal), so whoever committed the pipeline (its data source, features and
parameters: the model's recipe) could approve the model it trained into production. The candidate's
authors are now the pipeline version's authors, and a gateway actor string is read as its principal.
Real git, real database, a real training run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import PermissionDenied
from gateway.ml.pipelines.run import run_pipeline
from gateway.registry.blobs import BlobStore, blob_root
from gateway.registry.sync import sync
from tests.ml.pipelines.conftest import credit_project  # noqa: F401  (fixture)
from tests.security._registry import engine, key, promotions


@pytest.mark.parametrize("trigger", ["opsgate-scheduler", "rita@example.com (key key_0123456789ab)"])
def test_the_pipelines_author_may_not_approve_its_candidate(
    credit_project: Path,  # noqa: F811
    tmp_path: Path,
    trigger: str,
) -> None:
    eng, data_dir = engine(tmp_path), tmp_path / "data"
    report = sync(eng, credit_project, actor="tester", blobs=BlobStore(blob_root(data_dir)))
    assert not report.errors
    result = run_pipeline(eng, credit_project, "credit", actor=trigger, data_dir=data_dir)
    assert result.status == "passed", result.error
    version = int(str(result.candidate).rsplit("@", 1)[1].split("#")[0])

    rita = key(eng, "rita", "rita@example.com", ["prompt-engineer", "approver"])
    writer = key(
        eng, "writer", "tests@example.com", ["approver"]
    )  # committed the pipeline (tests' git identity)
    carol = key(eng, "carol", "carol@example.com", ["approver"])
    service = promotions(eng)
    request = service.request(writer, kind="model", name="credit", version=version, alias="staging")
    with pytest.raises(PermissionDenied, match="four-eyes"):
        service.approve(writer, request.id)  # the requester, as before
    service.reject(carol, request.id, reason="again")
    request = service.request(rita, kind="model", name="credit", version=version, alias="staging")
    with pytest.raises(PermissionDenied, match="is the author of model:credit"):
        service.approve(writer, request.id)
    if trigger.startswith("rita"):  # the one who ran it counts too
        other = service.request(carol, kind="model", name="credit", version=version, alias="production")
        with pytest.raises(PermissionDenied, match="is the author of model:credit"):
            service.approve(rita, other.id)
    assert service.approve(carol, request.id).state == "applied"
