"""Governed training pipelines: `config/pipelines/<name>.yaml` -> a candidate model version.

spec.py (the file's typed spec), catalog.py (the scikit-learn classes a file may name), data.py (sources
and cleaning), train.py (split, featurize, fit, search, metrics, gates), run.py (`opsgate pipeline run`:
train, validate, register, report), trigger.py (a model's drift or accuracy breach starts its pipeline,
once across replicas). Nothing a committed file names can run code: every class comes from an allow-list
and every parameter is plain data.
"""
