"""Alert rules (config/alerts.yaml): what to watch, when to fire, whom to tell; and the figures they read.

    evaluate_every_s: 15
    receivers:
      oncall: {url: "https://hooks.example.com/opsgate", secret_env: ONCALL_HMAC_SECRET, retries: 5}
    rules:
      - name: kbqa-errors
        metric: error_rate          # requests | error_rate | latency_ms | upstream_ms | ttft_ms | cost_usd
        artifact: prompt:kbqa       #   | tokens | fallback_rate | eval_score
        window: 5m
        op: ">"
        threshold: 0.05
        for: 1m
        severity: critical
        receivers: [oncall]

The file is a governed artifact (`alert:alerts`, gateway/registry/rules.py): a change is registered by
`opsgate sync` and takes effect when promoted to `production`, with its audit entries.

Figures come from the shared database (the request log and the online-eval scores), not from one
process's Prometheus counters, so every replica sees the same values. A rule whose `artifact` is
`kind:name` is judged per version (`kind:name@3` and `kind:name@4` fire separately); `kind:name@3` one
version; no `artifact` all traffic together.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field, ValidationInfo, model_validator
from sqlalchemy import Engine, String, cast, select
from sqlalchemy.orm import Session

from gateway.db.models import OnlineEvalScore, RequestLog
from gateway.yamlspec import ENV_NAME_PATTERN, NAME_PATTERN, StrictModel

if TYPE_CHECKING:
    from gateway.egress import Egress

ALERTS_FILE = "alerts.yaml"
ALL = "*"  # the subject of a rule without an artifact: all traffic
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_ARTIFACT = r"^[a-z][a-z0-9_-]*:[a-zA-Z0-9][a-zA-Z0-9._-]{0,127}(@[0-9]{1,9})?$"


def _seconds(value: Any) -> Any:
    """`90`, `90s`, `5m`, `1h`, `1d` -> seconds."""
    if isinstance(value, str):
        found = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)\s*", value)
        if not found:
            raise ValueError("a duration is a number of seconds or a number with s, m, h or d (e.g. 5m)")
        return float(found.group(1)) * _UNITS[found.group(2) or "s"]
    return value


Duration = Annotated[float, BeforeValidator(_seconds)]
Metric = Literal[
    "requests",
    "error_rate",
    "latency_ms",
    "upstream_ms",
    "ttft_ms",
    "cost_usd",
    "tokens",
    "fallback_rate",
    "eval_score",
]
PERCENTILE_METRICS = ("latency_ms", "upstream_ms", "ttft_ms")
SUM_METRICS = ("requests", "cost_usd", "tokens")
OPS = {">": float.__gt__, ">=": float.__ge__, "<": float.__lt__, "<=": float.__le__}


class Receiver(StrictModel):
    """A webhook: signed like every opsgate alert (gateway/monitoring/alerts.py); its host must be on the
    operator's `egress.webhook_hosts`."""

    url: str
    secret_env: str | None = Field(
        None, pattern=ENV_NAME_PATTERN, description="Env var holding the HMAC secret."
    )
    timeout_s: float = Field(5.0, gt=0, le=60)
    retries: int = Field(5, ge=0, le=20, description="Further attempts after a failed one, with backoff.")
    backoff_s: float = Field(
        1.0, gt=0, le=600, description="First wait; doubles per attempt (capped at 300 s)."
    )

    @model_validator(mode="after")
    def _egress_allowed(self, info: ValidationInfo) -> Receiver:
        """A file being loaded (`opsgate sync`, start-up): the host and the variable are the operator's to
        allow (egress.webhook_hosts, egress.webhook_secret_envs); delivery checks both again."""
        from gateway.egress import egress_in, raise_problems

        egress = egress_in(info)
        if egress is not None:
            raise_problems("Receiver", self.egress_problems(egress))
        return self

    def egress_problems(self, egress: Egress) -> list[tuple[tuple[str | int, ...], str]]:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        if (problem := egress.webhook_problem(self.url)) is not None:
            problems.append((("url",), problem))
        if self.secret_env and (problem := egress.webhook_secret_problem(self.secret_env)) is not None:
            problems.append((("secret_env",), problem))
        return problems


class AlertRule(StrictModel):
    # `for` is a Python keyword: the field is `for_`, written `for` in the file (the registry stores `for_`)
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    metric: Metric
    artifact: str | None = Field(
        None, pattern=_ARTIFACT, description="kind:name (judged per version), kind:name@N, or none (all)."
    )
    percentile: float = Field(95, gt=0, le=100, description="For latency_ms, upstream_ms, ttft_ms.")
    eval_metric: str | None = Field(None, description="For eval_score: the online-eval metric's name.")
    errors: Literal["server", "any"] = Field(
        "server", description="For error_rate: status >= 500 (server) or >= 400 (any)."
    )
    window: Duration = Field(300, gt=0, le=7 * 86400)
    op: Literal[">", ">=", "<", "<="] = ">"
    threshold: float
    for_: Duration = Field(0, ge=0, le=7 * 86400, alias="for")
    min_samples: int = Field(1, ge=1, description="Fewer requests (or scores) in the window: no verdict.")
    severity: Literal["critical", "warning", "info"] = "warning"
    receivers: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _metric_fields(self) -> AlertRule:
        if self.metric == "eval_score":
            if not self.eval_metric:
                raise ValueError("eval_score needs eval_metric (the online-eval metric's name)")
            if self.artifact is not None and not self.artifact.startswith("prompt:"):
                raise ValueError("eval_score is kept per prompt version: artifact must be prompt:NAME[@N]")
        elif self.eval_metric is not None:
            raise ValueError("eval_metric is only for metric eval_score")
        return self

    def breached(self, value: float) -> bool:
        return OPS[self.op](float(value), float(self.threshold))

    def describe(self) -> str:
        what = f"p{self.percentile:g} {self.metric}" if self.metric in PERCENTILE_METRICS else self.metric
        if self.metric == "eval_score":
            what = f"eval_score {self.eval_metric}"
        return f"{what} over {self.window:g}s {self.op} {self.threshold:g}"


class AlertsSpec(StrictModel):
    evaluate_every_s: Duration = Field(15, ge=0.1, le=3600)
    receivers: dict[str, Receiver] = Field(default_factory=dict)
    rules: list[AlertRule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _names(self) -> AlertsSpec:
        seen: set[str] = set()
        for i, rule in enumerate(self.rules):
            if rule.name in seen:
                raise ValueError(f"rules.{i}: the name {rule.name!r} is used twice")
            seen.add(rule.name)
            for name in rule.receivers:
                if name not in self.receivers:
                    known = ", ".join(self.receivers) or "none"
                    raise ValueError(f"rules.{i}: receiver {name!r} is not defined (receivers: {known})")
        return self


def alerts_model() -> type[AlertsSpec]:
    """The model of config/alerts.yaml (gateway/registry/rules.py reads governed files through it)."""
    return AlertsSpec


# -- figures ------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (the value below which q% of the sample lies)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _subjects(rule: AlertRule, artifacts: Iterable[str]) -> list[str]:
    """The versions of a row a rule judges (`kind:name@N`), or [ALL]."""
    if rule.artifact is None:
        return [ALL]
    versioned = "@" in rule.artifact
    out = []
    for ref in artifacts:
        bare = ref.split("#", 1)[0]
        if bare == rule.artifact if versioned else bare.startswith(rule.artifact + "@"):
            out.append(bare)
    return out


def _request_value(rule: AlertRule, rows: list[Any]) -> tuple[float | None, int]:
    n = len(rows)
    if rule.metric == "requests":
        return float(n), n
    if rule.metric == "error_rate":
        floor = 500 if rule.errors == "server" else 400
        return (sum(1 for r in rows if r.status >= floor) / n if n else None), n
    if rule.metric == "fallback_rate":
        fell = sum(1 for r in rows if len({a.get("deployment") for a in r.attempts or []}) > 1)
        return (fell / n if n else None), n
    if rule.metric == "cost_usd":
        return float(sum(r.cost_usd or 0.0 for r in rows)), n
    if rule.metric == "tokens":
        return float(sum((r.tokens_in or 0) + (r.tokens_out or 0) for r in rows)), n
    values = [float(getattr(r, rule.metric)) for r in rows if getattr(r, rule.metric) is not None]
    return (percentile(values, rule.percentile) if values else None), len(values)


def request_figures(engine: Engine, rule: AlertRule, now: datetime) -> dict[str, tuple[float | None, int]]:
    """(value, sample size) per subject over the rule's window, from the request log."""
    since = now - timedelta(seconds=rule.window)
    query = select(
        RequestLog.artifacts,
        RequestLog.status,
        RequestLog.latency_ms,
        RequestLog.upstream_ms,
        RequestLog.ttft_ms,
        RequestLog.cost_usd,
        RequestLog.tokens_in,
        RequestLog.tokens_out,
        RequestLog.attempts,
    ).where(RequestLog.ts >= since)
    if rule.artifact is not None:  # a coarse filter in the database; the exact match is `_subjects`
        query = query.where(cast(RequestLog.artifacts, String).like(f"%{rule.artifact}%"))
    grouped: dict[str, list[Any]] = defaultdict(list)
    with Session(engine) as session:
        for row in session.execute(query):
            for subject in _subjects(rule, row.artifacts or []):
                grouped[subject].append(row)
    if rule.artifact is None and not grouped:
        grouped[ALL] = []
    return {subject: _request_value(rule, rows) for subject, rows in grouped.items()}


def eval_figures(engine: Engine, rule: AlertRule, now: datetime) -> dict[str, tuple[float | None, int]]:
    """Mean online-eval score per prompt version over the window."""
    since = now - timedelta(seconds=rule.window)
    query = select(OnlineEvalScore.prompt, OnlineEvalScore.prompt_version, OnlineEvalScore.score).where(
        OnlineEvalScore.ts >= since,
        OnlineEvalScore.metric == rule.eval_metric,
        OnlineEvalScore.score.is_not(None),
    )
    if rule.artifact is not None:
        name, _, version = rule.artifact.removeprefix("prompt:").partition("@")
        query = query.where(OnlineEvalScore.prompt == name)
        if version:
            query = query.where(OnlineEvalScore.prompt_version == int(version))
    scores: dict[str, list[float]] = defaultdict(list)
    with Session(engine) as session:
        for prompt, number, score in session.execute(query):
            scores[ALL if rule.artifact is None else f"prompt:{prompt}@{number}"].append(float(score or 0))
    return {s: (sum(v) / len(v), len(v)) for s, v in scores.items()}


def figures(engine: Engine, rule: AlertRule, now: datetime) -> dict[str, float | None]:
    """The rule's value per subject (None: a rate, percentile or score of fewer samples than `min_samples`;
    counts and sums always have a value)."""
    found = (
        eval_figures(engine, rule, now) if rule.metric == "eval_score" else request_figures(engine, rule, now)
    )
    sums = rule.metric in SUM_METRICS
    return {s: (v if sums or n >= rule.min_samples else None) for s, (v, n) in found.items()}
