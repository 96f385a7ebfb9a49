"""The suite file, `evals/<suite>.yaml`, parsed once into typed models (file, line and field on errors).

    name: support_qa
    target: prompt:support_qa@staging        # a prompt by version or alias, or router:NAME with messages
    dataset: evals/data/support_qa.jsonl     # or {path, fields, where, limit}
    metrics: [exact_match, rouge, semantic_similarity, context_recall_nonllm, hit_at_4]
    gates:
      - {metric: semantic_similarity, min: 0.7}
      - {metric: hit_at_4, min_delta_vs: production, delta: -0.02}

A gate's `type:` may be left out when its fields say which it is (`min_delta_vs` -> baseline, `metric`
-> threshold); it is written out in the parsed model either way.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from gateway.errors import ConfigError
from gateway.prompts.spec import PromptMessage
from gateway.yamlspec import NAME_PATTERN, StrictModel, format_validation_error, line_of, parse_yaml_text

Stat = Literal["mean", "median", "p95", "min", "max"]


CaseField = Literal[
    "id",
    "question",
    "reference",
    "references",
    "reference_contexts",
    "reference_context_ids",
    "variables",
    "metadata",
]


class DatasetSpec(StrictModel):
    """A JSONL file, one case a line. `fields` maps our field names to the file's own keys."""

    path: str
    fields: dict[CaseField, str] = Field(default_factory=dict)
    where: dict[str, Any] = Field(default_factory=dict, description="Keep only lines whose keys equal these.")
    limit: int | None = Field(None, ge=1, description="The first N cases (after `where`).")

    @field_validator("path")
    @classmethod
    def _inside(cls, value: str) -> str:
        """Relative to the project (or the suite's directory), never absolute, never up with `..`."""
        from gateway.registry.tree import OPSGATE_OWN, UnsafePath, normalise

        try:
            rel = normalise(value.replace("\\", "/"))
        except UnsafePath as exc:
            raise ValueError(f"{value!r} {exc.reason}") from None
        if rel.split("/", 1)[0] in OPSGATE_OWN:
            raise ValueError(f"{value!r} names a file opsgate keeps for itself ({', '.join(OPSGATE_OWN)})")
        return value


class MetricUse(StrictModel):
    """A metric as a suite uses it: its registered name, parameters, and the key its scores are stored under."""

    name: str
    key: str
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known(self) -> MetricUse:
        from gateway.evaluation.metrics import registry

        registry().find(self.name).check_params(self.params, self.name)
        return self


class ThresholdGate(StrictModel):
    """The metric's statistic over all cases must lie within [min, max]."""

    type: Literal["threshold"] = "threshold"
    metric: str
    stat: Stat = "mean"
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _bound(self) -> ThresholdGate:
        if self.min is None and self.max is None:
            raise ValueError("a threshold gate needs min, max or both")
        return self


class BaselineGate(StrictModel):
    """No regression against a baseline version or alias: candidate - baseline >= delta.

    `delta` is absolute (-0.02 allows a drop of 0.02), or relative to the baseline with `relative: true`
    (-0.05 allows a 5% drop). The metric says which way is better (latency and cost: lower);
    `lower_is_better` overrides it.
    """

    type: Literal["baseline"] = "baseline"
    metric: str
    min_delta_vs: str = Field(description="The baseline: an alias (production) or a version number.")
    delta: float = 0.0
    relative: bool = False
    lower_is_better: bool | None = None
    stat: Stat = "mean"


class PassRateGate(StrictModel):
    """At least `min` of the cases pass. A case passes when its scores meet every per-case minimum in
    `case` in at least `repeats_min` of its repeats."""

    type: Literal["pass_rate"] = "pass_rate"
    min: float = Field(ge=0, le=1)
    case: dict[str, float] = Field(min_length=1, description="metric -> per-case minimum score")
    repeats_min: float = Field(1.0, gt=0, le=1)


class CasePassRateGate(StrictModel):
    """Every case passes (its scores meet `case`) in at least `min` of its repeats: flaky cases fail it."""

    type: Literal["case_pass_rate"] = "case_pass_rate"
    min: float = Field(gt=0, le=1)
    case: dict[str, float] = Field(min_length=1)


def _gate_kind(value: Any) -> str:
    if isinstance(value, dict):
        if "type" in value:
            return str(value["type"])
        if "min_delta_vs" in value:
            return "baseline"
        if "metric" in value:
            return "threshold"
        if "case" in value:
            return "pass_rate"
        return "threshold"
    return str(getattr(value, "type", "threshold"))


Gate = Annotated[
    Annotated[ThresholdGate, Tag("threshold")]
    | Annotated[BaselineGate, Tag("baseline")]
    | Annotated[PassRateGate, Tag("pass_rate")]
    | Annotated[CasePassRateGate, Tag("case_pass_rate")],
    Discriminator(_gate_kind),
]


class SuiteSpec(StrictModel):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    target: str = Field(description="prompt:NAME[@VERSION|@ALIAS], or router:NAME[@...] with `messages`")
    messages: list[PromptMessage] = Field(
        default_factory=list,
        description="Jinja templates over the case (question, reference_contexts, variables, metadata); "
        "for a prompt target they come after the prompt's own messages.",
    )
    variables: dict[str, Any] = Field(default_factory=dict, description="Prompt variables for every case.")
    question_variable: str | None = Field(
        None, description="Pass the question as this prompt variable instead of as a user message."
    )
    dataset: DatasetSpec
    metrics: list[MetricUse] = Field(min_length=1)
    judge: str | None = Field(None, description="A chat router served by opsgate that judges LLM metrics.")
    include_context: bool = Field(True, description="Ask the gateway for the retrieved chunks' text.")
    params: dict[str, Any] = Field(default_factory=dict, description="Extra request parameters.")
    gates: list[Gate] = Field(default_factory=list)
    max_error_rate: float = Field(
        0.0, ge=0, le=1, description="Share of calls that may fail (HTTP errors) before the run fails."
    )
    concurrency: int = Field(4, ge=1, le=256)
    repeats: int = Field(1, ge=1, le=100)
    timeout_s: float = Field(60.0, gt=0)

    @field_validator("dataset", mode="before")
    @classmethod
    def _dataset_path(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value

    @field_validator("metrics", mode="before")
    @classmethod
    def _metric_uses(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        out: list[Any] = []
        for item in value:
            if isinstance(item, str):
                out.append({"name": item, "key": item})
            elif isinstance(item, dict) and "name" in item:
                params = {k: v for k, v in item.items() if k not in ("name", "as")}
                out.append({"name": item["name"], "key": item.get("as", item["name"]), "params": params})
            else:
                out.append(item)
        return out

    @model_validator(mode="after")
    def _consistent(self) -> SuiteSpec:
        from gateway.evaluation.metrics import registry

        keys = [m.key for m in self.metrics]
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        if duplicates:
            raise ValueError(f"metric {duplicates[0]!r} is listed twice; give one an `as:` name")
        metrics = registry()
        for use in self.metrics:
            if metrics.find(use.name).needs_judge and not self.judge:
                raise ValueError(
                    f"metric {use.name!r} is judged by an LLM: set `judge: <router>` in the suite (a chat"
                    " router served by opsgate); opsgate never lets ragas call a provider on its own"
                )
        known = set(keys) | {"latency_ms", "cost_usd"}
        for gate in self.gates:
            names = [gate.metric] if isinstance(gate, ThresholdGate | BaselineGate) else list(gate.case)
            for name in names:
                if name not in known:
                    raise ValueError(f"gate on {name!r}, which is not among the suite's metrics")
        kind = self.target.split(":", 1)[0] if ":" in self.target else "prompt"
        if kind == "router" and not self.messages:
            raise ValueError("a router target needs `messages` (templates over the case)")
        if kind not in ("prompt", "router"):
            raise ValueError("target must be prompt:NAME[@SEL] or router:NAME[@SEL]")
        return self


class LoadedSuite(StrictModel):
    spec: SuiteSpec
    path: str
    content_hash: str
    dataset_line: int | None = None  # where the suite names its dataset (errors about the path point here)


def read_suite_template(suite_dir: Path, file: str) -> str:
    """A suite's template file, below the suite's directory: a regular file reached through no link, like
    every file an author names (gateway/registry/tree.py); `ConfigError` saying why not."""
    from gateway.registry.tree import UnsafePath, read_project_file

    try:
        return read_project_file(suite_dir, file).decode("utf-8")
    except UnsafePath as exc:
        raise ConfigError(f"file: {file!r} {exc.reason}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"file: {file!r} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"file: {file!r} cannot be read: {exc.strerror}") from None


def load_suite(file: Path, *, display: str | None = None) -> LoadedSuite:
    shown = display or str(file)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the suite: {exc.strerror}", path=shown) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError("the file is not valid UTF-8", path=shown) from exc
    data, root = parse_yaml_text(text, shown)
    if not isinstance(data, dict):
        raise ConfigError("the file must hold a mapping (key: value) at its top level", path=shown, line=1)
    from pydantic import ValidationError

    try:
        spec = SuiteSpec.model_validate(data)
    except ValidationError as exc:
        raise format_validation_error(exc, root, shown) from exc
    for i, message in enumerate(spec.messages):  # refused before any case is run
        if message.file is not None:
            try:
                read_suite_template(file.parent, message.file)
            except ConfigError as exc:
                raise ConfigError(
                    f"messages.{i}.{exc.detail}", path=shown, line=line_of(root, ("messages", i, "file"))
                ) from None
    return LoadedSuite(
        spec=spec,
        path=shown,
        content_hash=hashlib.sha256(raw).hexdigest(),
        dataset_line=line_of(root, ("dataset", "path")),
    )
