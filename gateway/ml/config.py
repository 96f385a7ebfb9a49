"""The `ml:` section of config/gateway.yaml.

What may run code in the gateway is the operator's decision, written here, never a model spec's:
`trusted_models` and `trusted_types` say which model files may load beyond skops' safe set, and
`retrain_commands` are the only commands a retraining trigger can run (a spec names one).
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from gateway.yamlspec import NAME_PATTERN, StrictModel

SHA256_ENTRY = re.compile(r"^sha256:[0-9a-f]{64}$")


# -- ml.pipelines ---------------------------------------------------------------------------------------
# What a training pipeline may reach is the operator's decision (docs/pipelines.md): a pipeline file
# names a database and a backend; the URL, the credentials and the scheduler's address are here, and
# the scheduler's host must be on egress.hosts like any other host the gateway calls.

ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class PipelinesConfig(StrictModel):
    databases: dict[str, str] = Field(
        default_factory=dict,
        description="name -> the environment variable holding its SQLAlchemy URL, or 'gateway' for the"
        " gateway's own database. A pipeline's `source.database` names one of these.",
    )
    dask_scheduler: str | None = Field(
        None,
        description="tcp://host:port of the Dask scheduler pipelines with `engine: {backend: dask}` use;"
        " its host must be on egress.hosts. Unset: a local cluster of `dask_workers` processes.",
    )
    dask_workers: int = Field(2, ge=1, le=256, description="Worker processes of the local cluster.")
    timeout_s: float = Field(
        3600,
        gt=0,
        description="A run's time limit: a run still training after it is stopped and registers nothing.",
    )
    schedule_tick_s: float = Field(
        30, ge=0, description="How often the gateway looks for due scheduled pipeline runs (0: never)."
    )

    @field_validator("databases")
    @classmethod
    def _databases(cls, value: dict[str, str]) -> dict[str, str]:
        for name, target in value.items():
            if target != "gateway" and not ENV.match(target):
                raise ValueError(
                    f"{name}: give the name of an environment variable holding the URL (never the URL"
                    " itself: it carries credentials), or 'gateway'"
                )
            if target.startswith("OPSGATE_"):
                raise ValueError(f"{name}: OPSGATE_* variables are the gateway's own")
        return value

    @field_validator("dask_scheduler")
    @classmethod
    def _scheduler(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^(tcp|tls)://[^/\s]+:\d+$", value):
            raise ValueError("write tcp://host:port (or tls://host:port)")
        return value


class MLConfig(StrictModel):
    monitor_interval_s: float = Field(
        60.0,
        ge=0,
        description="How often served versions are checked for drift, fairness, accuracy (0: never).",
    )
    queue_size: int = Field(10_000, gt=0, description="Prediction batches waiting to be written.")
    batch_size: int = Field(2000, gt=0, description="Rows written per transaction.")
    flush_interval_s: float = Field(0.2, gt=0)
    inline_rows: int = Field(
        256,
        ge=0,
        description="Batches up to this many rows are scored on the event loop; larger in a thread.",
    )
    preload: bool = Field(True, description="Load every version an alias points at when the catalog changes.")
    warm_explanations: bool = Field(
        True,
        description="At start-up, before /readyz says ready, explain one reference row once, so the first"
        " `explain: true` request does not wait ~5 s for SHAP's code to compile.",
    )
    trusted_models: list[str] = Field(
        default_factory=list,
        description="Models whose files may load with a format that runs code (pickle, joblib, skops types"
        " outside the safe set): a model name (every version) or 'sha256:<hex>' of the model file's bytes"
        " (`sha256sum config/models/x.pkl`). Such a version loads only once a protected alias (staging,"
        " production) points at it. A spec's own `trusted: true` counts for nothing.",
    )
    trusted_types: list[str] = Field(
        default_factory=list,
        description="skops types to treat as safe for every model (e.g. sklearn.tree._tree.Tree for tree"
        " ensembles): files holding only safe and these types load like any skops file.",
    )
    retrain_commands: dict[str, list[str]] = Field(
        default_factory=dict,
        description="name -> argv: the commands a model's `retrain.command` may name. Run in the project"
        " directory with the evidence as JSON on stdin; their output goes to the server log, never to an"
        " HTTP caller.",
    )
    retrain_timeout_s: float = Field(
        600.0, gt=0, description="A retraining command running longer is killed."
    )
    pipelines: PipelinesConfig = Field(
        default_factory=PipelinesConfig,
        description="What training pipelines may reach: databases, the Dask scheduler (gateway/ml/pipelines).",
    )

    @field_validator("trusted_models")
    @classmethod
    def _trusted_models(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            if entry.startswith("sha256:"):
                if not SHA256_ENTRY.match(entry):
                    raise ValueError(
                        f"{entry!r}: write sha256:<64 lowercase hex digits> (sha256sum's output)"
                    )
            elif not re.fullmatch(NAME_PATTERN, entry):
                raise ValueError(f"{entry!r} is neither a model name nor sha256:<hex>")
        return entries

    @field_validator("retrain_commands")
    @classmethod
    def _commands(cls, commands: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, argv in commands.items():
            if not re.fullmatch(NAME_PATTERN, name):
                raise ValueError(f"{name!r}: a command name is letters, digits, '.', '_' or '-'")
            if not argv or not all(isinstance(a, str) and a for a in argv):
                raise ValueError(f"{name}: give the command as a non-empty list of arguments")
        return commands
