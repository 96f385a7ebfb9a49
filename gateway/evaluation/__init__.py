"""Evaluation: offline eval suites as CI gates and promotion checks, and online evaluation of live traffic.

spec.py       the suite file (`evals/<suite>.yaml`) and its gates, parsed with file/line/field errors
dataset.py    JSONL cases (question, reference(s), reference contexts or ids, variables, metadata)
metrics/      one file per metric family, registered in gateway.extensions ("opsgate.metrics")
target.py     calls the target through opsgate: in-process (the app over ASGI) or a running gateway
runner.py     runs a suite (concurrency, repeats, progress) into a RunResult
gates.py      absolute thresholds, baseline deltas, suite pass rate, per-case pass rate over repeats
store.py      eval runs and case results in the database, stamped with versions and hashes
reports.py    JSON, JUnit XML and a self-contained HTML report (inline SVG plots)
compare.py    per-metric deltas of two runs with paired bootstrap confidence intervals
online.py     deterministic sampling of live requests, the off-path worker, rolling means, alerts
cli.py        `opsgate eval ...`
"""
