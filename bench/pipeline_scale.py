"""A pipeline's search on one process vs a local Dask cluster of two worker processes.

    .venv/bin/python bench/pipeline_scale.py [--grid 8] [--cv 5] [--workers 2]

The German credit data (tests/ml/data, DbCL 1.0), the pipeline's own steps (one-hot + scaling + a random
forest of 100 trees) and a grid search over max_depth x min_samples_leaf: the same `gateway.ml.pipelines.train.fit` call, once with
`engine: {backend: local}` (n_jobs 1: one process) and once on a LocalCluster(processes=True) of
`--workers` workers (the joblib dask backend). Prints the wall time of each (cluster start-up excluded,
it is reported apart), checks that both find the same best parameters and CV score, and the load average.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", type=int, default=4, help="max_depth values tried (x 2 leaf sizes)")
    ap.add_argument("--cv", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    import pandas as pd
    from distributed import LocalCluster

    from gateway.ml.pipelines import data, train
    from gateway.ml.pipelines.spec import PipelineSpec
    from tests.ml.pipelines.conftest import DATA, credit_pipeline

    depths = [3 + 2 * i for i in range(args.grid)]
    base = credit_pipeline(
        estimator={"name": "RandomForestClassifier", "params": {"n_estimators": 100, "random_state": 0}},
        search={
            "type": "grid",
            "params": {"max_depth": depths, "min_samples_leaf": [1, 5]},
            "cv": args.cv,
            "scoring": "auc",
        },
    )
    base["validation"] = {"metrics": ["accuracy"], "gates": []}
    local = PipelineSpec.model_validate(base)
    on_dask = PipelineSpec.model_validate({**base, "engine": {"backend": "dask"}})
    frame = pd.read_csv(DATA, dtype=str, keep_default_na=False)
    cleaned = data.clean(local, data.Loaded(data._typed_csv(local, frame), "-", str(DATA)))
    parts = train.split(local, cleaned.x, cleaned.y, None)
    classes = sorted(set(parts.y_train.tolist()))
    fits = args.grid * 2 * args.cv
    print(
        f"search: random forest, {args.grid * 2} settings x {args.cv} folds = {fits} fits on {len(parts.x_train)} rows"
    )

    t = time.perf_counter()
    one = train.fit(local, parts, 1, classes)
    t_one = time.perf_counter() - t
    print(f"1 process:          {t_one:7.2f} s  best {one.best_params} cv {one.cv_score:.4f}")

    t = time.perf_counter()
    with LocalCluster(
        n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None
    ) as c:
        from distributed import Client

        with Client(c.scheduler_address) as client:  # warm the workers: import scikit-learn once
            client.run(lambda: __import__("sklearn.ensemble"))
        startup = time.perf_counter() - t
        t = time.perf_counter()
        many = train.fit(on_dask, parts, 1, classes, dask=c.scheduler_address)
        t_many = time.perf_counter() - t
    print(
        f"{args.workers}-worker cluster:   {t_many:7.2f} s  best {many.best_params} cv {many.cv_score:.4f}"
        f"  (cluster start-up and warm-up {startup:.2f} s, not counted)"
    )
    same = one.best_params == many.best_params and abs((one.cv_score or 0) - (many.cv_score or 0)) < 1e-12
    print(
        f"speed-up {t_one / t_many:.2f}x; same result: {same}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    )


if __name__ == "__main__":
    main()
