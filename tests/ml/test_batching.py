"""Micro-batching: concurrent requests in one loop turn share one estimator call; results and errors stay
with the request they belong to."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.ml.batching import MicroBatcher
from gateway.ml.model import ServedModel
from gateway.ml.spec import ModelSpec
from gateway.registry.files import load_artifact
from tests.ml.conftest import Data, records, write_models


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, data: Data) -> ServedModel:
    root = tmp_path_factory.mktemp("batching")
    write_models(root, data)
    art = load_artifact(root, "model", root / "config/models/cancer.yaml")
    spec = art.spec
    assert isinstance(spec, ModelSpec)
    files = {name: (Path(root / "config/models") / name).read_bytes() for name in spec.referenced_files()}
    return ServedModel.build(
        "model:cancer@1#x", "cancer", 1, art.content_hash, spec, data.cancer_model, files
    )


class CountingEstimator:
    """The real model, counting how often it is called and with how many rows."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[int] = []
        self.classes_ = inner.classes_

    def predict_proba(self, x: Any) -> Any:
        self.calls.append(len(x))
        return self.inner.predict_proba(x)


async def test_concurrent_requests_share_one_call_and_get_their_own_rows(
    served: ServedModel, data: Data
) -> None:
    counting = CountingEstimator(served.estimator)
    served.estimator = counting
    try:
        batcher = MicroBatcher(served)
        frame = data.cancer.drop(columns=["target"])
        requests = [records(frame.iloc[i : i + n]) for i, n in ((0, 1), (1, 3), (4, 2), (6, 1))]
        results = await asyncio.gather(*(batcher.predict(rows) for rows in requests))
        assert counting.calls == [7]  # one estimator call for the four requests
        for rows, result in zip(requests, results, strict=True):
            alone = served.predict(rows)
            assert result.labels == alone.labels
            assert np.allclose(np.array(result.probabilities), np.array(alone.probabilities))
        single = await batcher.predict(requests[0])  # a lone request: scored at once, batch of one
        assert counting.calls[-1] == 1 and single.labels == results[0].labels
    finally:
        served.estimator = counting.inner


async def test_a_failing_request_does_not_fail_the_others(served: ServedModel, data: Data) -> None:
    batcher = MicroBatcher(served)
    frame = data.cancer.drop(columns=["target"])
    good = records(frame.iloc[:2])
    bad = [dict(good[0], mean_radius=math.nan)]  # NaN: the estimator refuses it (no assume_finite)
    outcome = await asyncio.gather(batcher.predict(good), batcher.predict(bad), return_exceptions=True)
    assert not isinstance(outcome[0], BaseException) and len(outcome[0]) == 2
    assert isinstance(outcome[1], ValueError)
