"""`config/pipelines/<name>.yaml`: how a classic model is made, from raw data to a candidate version.

    name: breast_cancer
    model: breast_cancer                       # the model it produces (model:breast_cancer)
    source: {file: data/breast_cancer.csv}     # or {sql: "SELECT ...", database: warehouse}
                                               # or {feedback: {days: 30}}: logged predictions + feedback
    target: diagnosis
    cleaning: {min: clip, max: clip}           # per rule: drop (default) or fix; counts are reported
    split: {method: random, test_size: 0.3, seed: 0, stratify: true}   # or {method: time, column: ts}
    features:
      - {columns: [mean_radius, mean_texture], transformer: StandardScaler}
      - {columns: [sex], transformer: OneHotEncoder, params: {handle_unknown: ignore}}
    estimator: {name: LogisticRegression, params: {max_iter: 5000}}
    search: {type: grid, params: {C: [0.1, 1, 10]}, cv: 5, scoring: auc}
    engine: {backend: local}                   # or dask: the operator's cluster (ml.pipelines.dask_scheduler)
    validation:
      metrics: [auc, accuracy, f1]
      gates:
        - {metric: auc, min: 0.95}
        - {metric: auc, max_drop_vs_production: 0.01}
      fairness: true                           # the produced model's fairness bounds are a gate too
    produces:                                  # the model spec fields the candidate gets
      inputs: {mean_radius: {type: number, min: 0}, sex: {type: string, categories: [f, m], feature: false}}
      output: {positive: malignant}
      fairness: {protected: [sex], favourable: benign}
    trigger: {on: [drift], min_interval_s: 86400}
    schedule: {cron: "0 3 * * 1"}             # or {every_s: 86400}: run by the gateway, once across replicas

Nothing here can run code or reach a host: classes come from allow-lists (catalog.py), parameters are
plain data, the data file is read from the project without following links, a SQL query runs only on a
database the operator named (`ml.pipelines.databases`), read-only, and the Dask scheduler's address is the
operator's, never this file's.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from gateway.ml.pipelines import catalog
from gateway.ml.pipelines.cron import ScheduleSpec
from gateway.ml.spec import (
    AccuracySpec,
    DataQualitySpec,
    DriftSpec,
    ExplainSpec,
    FairnessSpec,
    FieldSpec,
    OutputSpec,
)
from gateway.registry.tree import OPSGATE_OWN
from gateway.yamlspec import NAME_PATTERN, StrictModel

Fix = Literal["drop", "fix"]
FILE_SUFFIXES = (".csv", ".parquet", ".pq")


def _project_path(value: str) -> str:
    parts = value.replace("\\", "/").split("/")
    if value.startswith("/") or ".." in parts or not value.strip():
        raise ValueError("must be a path inside the project, relative to its root, without '..'")
    if next((p for p in parts if p not in ("", ".")), "") in OPSGATE_OWN:
        raise ValueError(f"names a file opsgate keeps for itself ({', '.join(OPSGATE_OWN)}); name your data")
    if not value.lower().endswith(FILE_SUFFIXES):
        raise ValueError("must be a .csv or .parquet file")
    return value


class FeedbackSource(StrictModel):
    days: float = Field(30, gt=0, description="Predictions logged in this many days, with feedback.")
    versions: list[int] | None = Field(None, description="Only these versions' predictions (default: all).")


class SourceSpec(StrictModel):
    """Exactly one of: a file in the project, a SQL query, the model's logged predictions with feedback."""

    file: str | None = Field(None, description="CSV or Parquet, relative to the project root.")
    sql: str | None = Field(None, description="One read-only SELECT statement.")
    database: str | None = Field(
        None, description="A database the operator named in ml.pipelines.databases (config/gateway.yaml)."
    )
    feedback: FeedbackSource | None = None

    @field_validator("file")
    @classmethod
    def _file(cls, value: str | None) -> str | None:
        return None if value is None else _project_path(value)

    @field_validator("sql")
    @classmethod
    def _sql(cls, value: str | None) -> str | None:
        if value is None:
            return None
        body = value.strip().rstrip(";").strip()
        if ";" in body:
            raise ValueError("give one statement (no ';' inside the query)")
        if not body.lower().startswith(("select", "with")):
            raise ValueError("must be a SELECT (or WITH ... SELECT) query: a pipeline only reads")
        return value

    @model_validator(mode="after")
    def _one(self) -> SourceSpec:
        given = [k for k in ("file", "sql", "feedback") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of file, sql or feedback")
        if self.sql is not None and not self.database:
            raise ValueError("a sql source names its database (one of the operator's ml.pipelines.databases)")
        if self.sql is None and self.database is not None:
            raise ValueError("database goes with sql")
        return self

    @property
    def kind(self) -> str:
        return "file" if self.file else "sql" if self.sql else "feedback"


class CleaningSpec(StrictModel):
    """What happens to a row that breaks a rule of the produced model's input schema (gateway/ml/schema.py).
    drop: the row leaves the data. fix: min/max clip to the bound; required/type/finite/categories on a
    nullable field become missing (an imputer in `features` fills them); otherwise fix drops."""

    required: Fix = "drop"
    type: Fix = "drop"
    finite: Fix = "drop"
    min: Fix = "drop"
    max: Fix = "drop"
    categories: Fix = "drop"
    missing_target: Literal["drop"] = Field("drop", description="Rows without a label always leave.")
    duplicates: Literal["drop", "keep"] = "keep"


class SplitSpec(StrictModel):
    method: Literal["random", "time"] = Field(
        description="random: a seeded shuffle; time: the newest rows (by `column`) are the test set."
    )
    test_size: float = Field(0.25, gt=0, lt=1)
    seed: int = Field(0, description="The random split's seed (stated, so a run is repeatable).")
    stratify: bool = Field(True, description="Random split of a classification: keep class shares.")
    column: str | None = Field(None, description="Time split: the column that orders the rows.")

    @model_validator(mode="after")
    def _time_column(self) -> SplitSpec:
        if self.method == "time" and not self.column:
            raise ValueError("a time split names its column")
        if self.method == "random" and self.column:
            raise ValueError("column goes with method: time")
        return self


class FeatureStep(StrictModel):
    columns: list[str] = Field(min_length=1)
    transformer: str | list[str] = Field(
        description="An allowed transformer by name, or a list applied in order (e.g. [SimpleImputer,"
        " StandardScaler]); 'passthrough' keeps the columns as they are."
    )
    params: dict[str, Any] | list[dict[str, Any]] = Field(
        default_factory=dict, description="Its parameters (a list: one mapping per transformer)."
    )

    @field_validator("transformer")
    @classmethod
    def _allowed(cls, value: str | list[str]) -> str | list[str]:
        for name in [value] if isinstance(value, str) else value:
            if name != "passthrough" and name not in catalog.TRANSFORMERS:
                catalog.build(
                    catalog.TRANSFORMERS, name, {}, "transformer"
                )  # raises, naming the allowed ones
        return value

    @model_validator(mode="after")
    def _known(self) -> FeatureStep:
        names = self.names
        params = self.params if isinstance(self.params, list) else [self.params]
        if len(params) != len(names) and not (len(names) > 1 and params == [{}]):
            raise ValueError(f"give one params mapping per transformer ({len(names)})")
        for name, p in zip(names, params if len(params) == len(names) else [{}] * len(names), strict=True):
            if name != "passthrough":
                catalog.build(catalog.TRANSFORMERS, name, p, "transformer")
            elif p:
                raise ValueError("passthrough takes no params")
        return self

    @property
    def names(self) -> list[str]:
        return [self.transformer] if isinstance(self.transformer, str) else list(self.transformer)

    def param_list(self) -> list[dict[str, Any]]:
        params = self.params if isinstance(self.params, list) else [self.params]
        return params if len(params) == len(self.names) else [{}] * len(self.names)


class EstimatorSpec(StrictModel):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _allowed(cls, value: str) -> str:
        if value not in catalog.ESTIMATORS:
            catalog.build(catalog.ESTIMATORS, value, {}, "estimator")  # raises, naming the allowed ones
        return value

    @model_validator(mode="after")
    def _known(self) -> EstimatorSpec:
        catalog.build(catalog.ESTIMATORS, self.name, self.params, "estimator")
        return self


class SearchSpec(StrictModel):
    type: Literal["grid", "random"]
    params: dict[str, list[Any]] = Field(
        min_length=1, description="Estimator parameter -> the values to try (lists of plain values)."
    )
    cv: int = Field(5, ge=2, le=50, description="Folds (stratified for classification).")
    scoring: str = Field("auc", description="A validation metric name (auc, accuracy, f1, r2, rmse, ...).")
    n_iter: int = Field(10, ge=1, le=10_000, description="Random search: settings tried.")
    seed: int = 0

    @field_validator("params")
    @classmethod
    def _plain(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in value.items():
            if not values:
                raise ValueError(f"{key}: give at least one value")
            catalog.plain(values, key)
        return value

    @field_validator("scoring")
    @classmethod
    def _scoring(cls, value: str) -> str:
        if value not in catalog.METRICS:
            raise ValueError(f"{value!r} is not a metric; metrics: {', '.join(catalog.METRICS)}")
        return value


class EngineSpec(StrictModel):
    backend: Literal["local", "dask"] = Field(
        "local",
        description="dask: cross-validation and search run on the operator's Dask cluster"
        " (ml.pipelines.dask_scheduler in config/gateway.yaml), through scikit-learn's joblib backend.",
    )
    n_jobs: int = Field(1, ge=-1, le=1024, description="Parallel fits (-1: every worker core).")


class Gate(StrictModel):
    metric: str
    min: float | None = None
    max: float | None = None
    max_drop_vs_production: float | None = Field(
        None, ge=0, description="The candidate may be at most this much worse than the production version."
    )

    @model_validator(mode="after")
    def _one(self) -> Gate:
        if self.metric not in catalog.METRICS:
            raise ValueError(f"{self.metric!r} is not a metric; metrics: {', '.join(catalog.METRICS)}")
        if self.min is None and self.max is None and self.max_drop_vs_production is None:
            raise ValueError("give min, max or max_drop_vs_production")
        return self


class ValidationSpec(StrictModel):
    metrics: list[str] = Field(default_factory=list, description="Measured on the test split (and reported).")
    gates: list[Gate] = Field(default_factory=list)
    fairness: bool = Field(True, description="The produced model's fairness bounds gate the candidate.")

    @field_validator("metrics")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        for m in value:
            if m not in catalog.METRICS:
                raise ValueError(f"{m!r} is not a metric; metrics: {', '.join(catalog.METRICS)}")
        return value


class ProducesSpec(StrictModel):
    """The model spec fields the candidate version gets (see gateway/ml/spec.py)."""

    description: str = ""
    owner: str | None = None
    tags: list[str] = Field(default_factory=list)
    inputs: dict[str, FieldSpec] = Field(min_length=1)
    output: OutputSpec = OutputSpec()
    reference: Literal["train", "none"] = Field(
        "train", description="train: the training split (with its label) is the drift baseline."
    )
    data_quality: DataQualitySpec = DataQualitySpec()
    drift: DriftSpec = DriftSpec()
    fairness: FairnessSpec | None = None
    accuracy: AccuracySpec = AccuracySpec()
    explain: ExplainSpec = ExplainSpec()


Breach = Literal["drift", "accuracy", "fairness"]


class TriggerSpec(StrictModel):
    on: list[Breach] = Field(min_length=1, description="Which breaches of the model start this pipeline.")
    min_interval_s: float = Field(86_400, ge=0, description="At most one triggered run in this time.")


class PipelineSpec(StrictModel):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    owner: str | None = None
    model: str = Field(pattern=NAME_PATTERN, description="The model this pipeline produces versions of.")
    source: SourceSpec
    target: str = Field(description="The label column.")
    cleaning: CleaningSpec = CleaningSpec()
    split: SplitSpec
    features: list[FeatureStep] = Field(default_factory=list)
    remainder: Literal["drop", "passthrough"] = Field(
        "passthrough", description="Feature inputs no step names: passed through as they are, or dropped."
    )
    estimator: EstimatorSpec
    search: SearchSpec | None = None
    engine: EngineSpec = EngineSpec()
    validation: ValidationSpec = ValidationSpec()
    produces: ProducesSpec
    trigger: TriggerSpec | None = None
    schedule: ScheduleSpec | None = Field(
        None, description="Run by the gateway on a schedule (every_s or cron, UTC), once across replicas."
    )

    @model_validator(mode="after")
    def _consistent(self) -> PipelineSpec:
        inputs = self.produces.inputs
        features = {n for n, f in inputs.items() if f.feature}
        if not features:
            raise ValueError("produces.inputs: at least one field must be a feature (feature: true)")
        if self.target in inputs:
            raise ValueError(f"target {self.target!r} is also an input; the label is not a model input")
        seen: set[str] = set()
        for i, step in enumerate(self.features):
            for col in step.columns:
                if col not in features:
                    raise ValueError(f"features.{i}: {col!r} is not a feature input of produces.inputs")
                if col in seen:
                    raise ValueError(f"features.{i}: {col!r} is already transformed by an earlier step")
                seen.add(col)
        task = catalog.estimator_task(self.estimator.name)
        metrics = list(self.validation.metrics) + [g.metric for g in self.validation.gates]
        if self.search is not None:
            metrics.append(self.search.scoring)
        for metric in metrics:
            if catalog.METRICS[metric][1] != task:
                raise ValueError(
                    f"metric {metric!r} does not apply to a {task} estimator ({self.estimator.name})"
                )
        fairness = self.produces.fairness
        for col in fairness.protected if fairness else []:
            if col not in inputs:
                raise ValueError(f"produces.fairness.protected: {col!r} is not an input column")
        if fairness is not None and task == "regression":
            raise ValueError("fairness applies to classification models")
        if self.search is not None:
            known = catalog.build(catalog.ESTIMATORS, self.estimator.name, {}, "estimator").get_params()
            for key in self.search.params:
                if key not in known:
                    raise ValueError(
                        f"search.params: {key!r} is not a parameter of {self.estimator.name}"
                        f" ({', '.join(sorted(known))})"
                    )
        if self.split.column is not None and self.split.column == self.target:
            raise ValueError("split.column cannot be the target")
        return self

    @property
    def task(self) -> str:
        return catalog.estimator_task(self.estimator.name)

    @property
    def metrics(self) -> list[str]:
        """Every metric measured: the listed ones, the gated ones, the search's scoring."""
        names = list(self.validation.metrics) + [g.metric for g in self.validation.gates]
        if self.search is not None:
            names.append(self.search.scoring)
        return list(dict.fromkeys(names))
