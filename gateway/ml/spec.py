"""`config/models/<name>.yaml`: a classic ML model, its input schema, and how it is monitored.

    name: cancer
    model: {file: cancer.skops}                # skops by default; pickle/joblib load only if the operator trusts them
    task: classification
    inputs:                                    # every column a request row may carry
      mean_radius: {type: number, min: 0}
      age: {type: integer, min: 0, max: 120}
      sex: {type: string, categories: [f, m], feature: false}   # checked and logged, not fed to the model
    output: {labels: [0, 1], positive: 1}
    reference: {file: cancer.reference.csv, target: target}     # drift baseline
    fairness: {protected: [sex], favourable: 1}
    retrain: {on: [drift, accuracy], command: cancer_retrain}   # a name from ml.retrain_commands

The model file and the reference file are referenced relative to this file; their bytes are part of the
version's content hash, so a changed model file is a new version and a tampered one is refused.

Nothing in a spec can make the gateway run code: which files may load beyond skops' safe set and which
commands retraining runs are the operator's (`ml:` in config/gateway.yaml, see gateway/ml/config.py).
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from gateway.yamlspec import NAME_PATTERN, StrictModel

log = logging.getLogger("opsgate.ml")
STORED = "stored"  # validation context: a registered version's spec, read back from the registry
Scalar = int | float | str | bool
FieldType = Literal["number", "integer", "string", "boolean"]
NUMERIC: frozenset[str] = frozenset({"number", "integer", "boolean"})


def _relative_file(value: str) -> str:
    if value.startswith("/") or ".." in value.replace("\\", "/").split("/"):
        raise ValueError("must be a path relative to the spec's directory, without '..'")
    return value


class FieldSpec(StrictModel):
    """One input column and the data-quality rules every row must pass."""

    type: FieldType = "number"
    required: bool = Field(True, description="A row without this column (or with null) is a violation.")
    nullable: bool = Field(False, description="null is allowed and reaches the model as a missing value.")
    min: float | None = None
    max: float | None = None
    categories: list[Scalar] | None = Field(None, description="The only values allowed.")
    feature: bool = Field(
        True, description="false: checked and logged (e.g. for fairness), not fed to the model."
    )

    @model_validator(mode="after")
    def _consistent(self) -> FieldSpec:
        if (self.min is not None or self.max is not None) and self.type not in ("number", "integer"):
            raise ValueError(f"min/max apply to number and integer fields, not {self.type}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        if self.categories is not None and not self.categories:
            raise ValueError("categories must list at least one value")
        return self


class ModelFile(StrictModel):
    file: str = Field(description="The model file, relative to this spec.")
    format: Literal["skops", "pickle", "joblib"] = Field(
        "skops",
        description="pickle and joblib run code when loaded: such a file loads only when the operator lists"
        " the model in ml.trusted_models (config/gateway.yaml) and a protected alias points at the version.",
    )
    trusted: bool = Field(
        False,
        description="Accepted for older specs and ignored: a spec cannot vouch for itself; the operator's"
        " ml.trusted_models decides.",
    )
    trusted_types: list[str] = Field(
        default_factory=list,
        description="Accepted for older specs and ignored: extra skops types are trusted by the operator"
        " (ml.trusted_types or ml.trusted_models).",
    )

    @field_validator("file")
    @classmethod
    def _file(cls, value: str) -> str:
        return _relative_file(value)


class OutputSpec(StrictModel):
    labels: list[Scalar] | None = Field(
        None, description="Classification labels, in the model's class order."
    )
    probabilities: bool = Field(
        True, description="Return class probabilities (classifiers with predict_proba)."
    )
    positive: Scalar | None = Field(
        None, description="Positive class for F1 and AUC (default: the last label)."
    )


class ReferenceSpec(StrictModel):
    file: str = Field(
        description="CSV with the input columns (and optionally the target), relative to this spec."
    )
    target: str | None = Field(None, description="The label column, if the file has one.")

    @field_validator("file")
    @classmethod
    def _file(cls, value: str) -> str:
        return _relative_file(value)


class DataQualitySpec(StrictModel):
    on_violation: Literal["reject", "flag"] = Field(
        "reject",
        description="reject: 422 naming row, field and rule. flag: min/max/category/unknown-column violations"
        " are counted and returned, the rows still scored (type, missing and NaN/inf always reject).",
    )


class DriftSpec(StrictModel):
    window: int = Field(1000, ge=10, description="The newest predictions compared with the reference.")
    min_rows: int = Field(50, ge=1, description="Fewer predictions than this: drift is not computed.")
    method: Literal["auto", "psi"] = Field(
        "auto", description="auto: Evidently's defaults by column type and reference size; psi: PSI for all."
    )
    threshold: float | None = Field(None, gt=0, description="Override the method's default threshold.")
    dataset_share: float = Field(
        0.5, gt=0, le=1, description="Dataset drift when this share of columns drift."
    )
    columns: list[str] | None = Field(None, description="Columns to test (default: every input column).")


class FairnessSpec(StrictModel):
    protected: list[str] = Field(min_length=1, description="Input columns holding protected attributes.")
    favourable: Scalar = Field(description="The favourable prediction (e.g. loan approved).")
    min_group_size: int = Field(30, ge=1, description="Smaller groups are reported but not judged.")
    window: int = Field(2000, ge=10)
    disparate_impact_min: float = Field(0.8, gt=0, le=1, description="The four-fifths rule by default.")
    parity_max_diff: float = Field(0.1, gt=0, le=1, description="Demographic parity difference allowed.")
    equal_opportunity_max_diff: float = Field(0.1, gt=0, le=1, description="True-positive-rate gap allowed.")


class AccuracySpec(StrictModel):
    window: int = Field(500, ge=1, description="The newest labelled predictions judged.")
    min_labelled: int = Field(30, ge=1, description="Fewer labelled predictions: no verdict.")
    min: dict[str, float] = Field(
        default_factory=dict, description="Floors, e.g. {accuracy: 0.9, f1: 0.85, auc: 0.9, r2: 0.5}."
    )
    max: dict[str, float] = Field(default_factory=dict, description="Ceilings, e.g. {mae: 40, rmse: 55}.")


Breach = Literal["drift", "fairness", "accuracy"]


def _default_breaches() -> list[Breach]:
    return ["drift", "accuracy"]


class RetrainSpec(StrictModel):
    on: list[Breach] = Field(default_factory=_default_breaches)
    command: Annotated[str, Field(pattern=NAME_PATTERN)] | list[str] | None = Field(
        None,
        description="The name of a command the operator configured in config/gateway.yaml"
        " (ml.retrain_commands); it runs with the evidence as JSON on stdin and OPSGATE_MODEL_REF set."
        " A list (a command written in the spec) is refused; versions registered before that rule keep"
        " it in their content, and it never runs.",
    )
    cooldown_s: float = Field(3600, ge=0, description="At most one trigger per version in this time.")

    @field_validator("command")
    @classmethod
    def _named_command(cls, value: str | list[str] | None, info: ValidationInfo) -> str | list[str] | None:
        if isinstance(value, list) and not (info.context or {}).get(STORED):
            raise ValueError(
                "a model spec names a retraining command, it cannot hold one (a command written here would"
                " run in the gateway). Ask the operator to add it to config/gateway.yaml, e.g."
                " `ml: {retrain_commands: {my_retrain: [python, retrain.py]}}`, and write"
                " `command: my_retrain`"
            )
        return value


class ExplainSpec(StrictModel):
    background_rows: int = Field(50, ge=5, le=1000, description="Reference rows used as the SHAP background.")
    global_rows: int = Field(
        100, ge=5, le=5000, description="Reference rows explained for global importance."
    )
    max_rows: int = Field(
        100, ge=1, le=10_000, description="Rows one `explain: true` request may ask to explain (422 above)."
    )


class ModelSpec(StrictModel):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    owner: str | None = None
    tags: list[str] = Field(default_factory=list)
    flavor: Literal["sklearn"] = "sklearn"
    task: Literal["classification", "regression"] = "classification"
    model: ModelFile
    inputs: dict[str, FieldSpec] = Field(min_length=1)
    feature_order: list[str] | None = Field(
        None, description="Column order for models trained without column names (written by register())."
    )
    output: OutputSpec = OutputSpec()
    reference: ReferenceSpec | None = None
    data_quality: DataQualitySpec = DataQualitySpec()
    drift: DriftSpec = DriftSpec()
    fairness: FairnessSpec | None = None
    accuracy: AccuracySpec = AccuracySpec()
    retrain: RetrainSpec | None = None
    explain: ExplainSpec = ExplainSpec()

    @model_validator(mode="after")
    def _columns_exist(self) -> ModelSpec:
        features = set(self.feature_names)
        if not features:
            raise ValueError("inputs: at least one field must be a feature (feature: true)")
        if self.feature_order is not None and (
            set(self.feature_order) != features or len(self.feature_order) != len(features)
        ):
            raise ValueError("feature_order must list every feature input exactly once")
        for col in self.fairness.protected if self.fairness else []:
            if col not in self.inputs:
                raise ValueError(f"fairness.protected: {col!r} is not an input column")
        for col in self.drift.columns or []:
            if col not in self.inputs:
                raise ValueError(f"drift.columns: {col!r} is not an input column")
        if self.task == "regression" and self.fairness is not None:
            raise ValueError("fairness applies to classification models")
        return self

    @property
    def feature_names(self) -> list[str]:
        return [name for name, f in self.inputs.items() if f.feature]

    def referenced_files(self) -> list[str]:
        files = [self.model.file]
        if self.reference is not None:
            files.append(self.reference.file)
        return files


def stored_spec(data: dict[str, Any], ref: str) -> ModelSpec:
    """A registered version's spec, parsed as it was registered (its content hash must still match).
    Versions registered before retraining commands moved to the operator's config may hold an argv in
    `retrain.command`: it parses, and never runs (gateway/ml/retrain.py refuses anything but a name).
    A spec this code cannot read is a ModelUnavailable that says what to do."""
    from gateway.ml.errors import ModelUnavailable

    try:
        spec = ModelSpec.model_validate(data, context={STORED: True})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "spec"
        raise ModelUnavailable(
            f"{ref} was registered with a spec this gateway cannot read ({where}: {first['msg']}); fix the"
            " file and register a new version with `opsgate sync`"
        ) from exc
    if spec.retrain is not None and isinstance(spec.retrain.command, list):
        log.warning(
            "%s: retrain.command holds a command, which will never run: name one of the operator's"
            " ml.retrain_commands (config/gateway.yaml) instead, and register a new version",
            ref,
        )
    return spec
