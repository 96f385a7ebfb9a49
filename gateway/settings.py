"""Settings: environment (`OPSGATE_*`) for where things are, `config/gateway.yaml` for how they behave.

The environment names the project directory (config/, prompts/, evals/), the data directory (database
file, indexes, key file) and the production services (PostgreSQL, Redis, chroma). Everything else lives
in `config/gateway.yaml`, parsed into `GatewayConfig`; a missing file means every default.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.egress import Egress, EgressConfig, raise_problems
from gateway.evaluation.config import EvaluationConfig
from gateway.limits import LimitsConfig
from gateway.ml.config import MLConfig
from gateway.monitoring.config import AlertsConfig
from gateway.registry.refs import ALIAS_RULE
from gateway.traffic.config import TrafficConfig
from gateway.yamlspec import StrictModel, load_spec


class ServerConfig(StrictModel):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0, description="Larger request bodies get 413.")
    access_log: bool = False
    shutdown_grace_s: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="On SIGTERM, how long requests in flight may run on; streams still open then are cut"
        " with an SSE error event (logged as 503 stream_cut_by_server).",
    )
    # Slow clients (docs/operations.md "Slow clients"): none of them holds a worker or memory for long.
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="Time a connection has to send a request's line and headers (else 408, then closed).",
    )
    max_header_bytes: int = Field(
        16 * 1024,
        ge=1024,
        le=1024 * 1024,
        description="Size of a request's line and headers together (else 431, then closed).",
    )
    body_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="Time a request has to send its whole body (else 408 body_timeout)."
    )
    send_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Time one write to a client may wait for it to read (a stream's reader that stops"
        " reading): past it the answer is cut and logged as 408 client_too_slow.",
    )


class MetricsConfig(StrictModel):
    require_key: bool = Field(
        True,
        description="/metrics needs a key with the `metrics` or `admin` role (Prometheus: bearer token).",
    )


class RequestLogConfig(StrictModel):
    queue_size: int = Field(10_000, gt=0, description="Rows waiting to be written; beyond it rows drop.")
    batch_size: int = Field(500, gt=0)
    flush_interval_s: float = Field(
        0.2,
        gt=0,
        description="A batch is what arrived within this time (or batch_size rows). Rows answered within it"
        " are still in memory: what a kill -9 can cost.",
    )
    spool: bool = Field(
        True,
        description="While the database fails, append rows to <data dir>/spool/request-log/ (fsync per"
        " batch) and replay them when it is back; off: rows wait in the queue (and drop when it is full).",
    )
    spool_max_mb: int = Field(
        1024, gt=0, description="Disk the spool may use; beyond it rows drop (counted)."
    )
    shutdown_deadline_s: float = Field(
        5.0,
        ge=0,
        le=600,
        description="On shutdown, how long to wait for the database to take what is queued; the rest is"
        " spooled.",
    )


class CacheConfig(StrictModel):
    refresh_interval_s: float = Field(
        0.5, gt=0, description="How often a gateway checks whether keys or aliases changed."
    )


class RequireEval(StrictModel):
    suite: str = Field(description="Name of the eval suite whose passing run the version needs.")


class AliasRule(StrictModel):
    """How a protected alias may move."""

    approvals: int = Field(1, ge=0, description="Approvals needed before the move applies.")
    approver_roles: list[str] = Field(default_factory=lambda: ["approver", "admin"])
    four_eyes: bool = Field(True, description="The version's author and the requester may not approve.")
    require_eval: RequireEval | None = None


class GovernanceConfig(StrictModel):
    protected_aliases: dict[str, AliasRule] = Field(
        default_factory=lambda: {"staging": AliasRule(), "production": AliasRule()}
    )
    requester_roles: list[str] = Field(
        default_factory=lambda: ["prompt-engineer", "approver", "admin"],
        description="Roles that may request a promotion or rollback.",
    )
    registrar_roles: list[str] = Field(
        default_factory=lambda: ["prompt-engineer", "admin"], description="Roles that may run `opsgate sync`."
    )

    @field_validator("protected_aliases")
    @classmethod
    def _alias_names(cls, value: dict[str, AliasRule]) -> dict[str, AliasRule]:
        for alias in value:
            if not ALIAS_RULE.fullmatch(alias):
                raise ValueError(
                    f"{alias!r} is not a valid alias name (a lowercase letter, then up to 63 lowercase letters,"
                    " digits, '_' or '-')"
                )
        return value


def governance_model() -> type[GovernanceConfig]:
    """The model of governance rule versions (gateway/registry/rules.py)."""
    return GovernanceConfig


class RolloutsConfig(StrictModel):
    check_interval_s: float = Field(
        30.0,
        gt=0,
        description="How often the rollout evaluator wakes (each rollout keeps its own interval_s).",
    )
    shadow_max_in_flight: int = Field(
        8,
        ge=1,
        description="Shadow calls running at once per replica; a sampled request beyond it is dropped and counted.",
    )


class GatewayConfig(StrictModel):
    server: ServerConfig = ServerConfig()
    request_log: RequestLogConfig = RequestLogConfig()
    cache: CacheConfig = CacheConfig()
    governance: GovernanceConfig = GovernanceConfig()
    alerts: AlertsConfig = AlertsConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    ml: MLConfig = MLConfig()
    egress: EgressConfig = EgressConfig()
    metrics: MetricsConfig = MetricsConfig()
    limits: LimitsConfig = LimitsConfig()
    rollouts: RolloutsConfig = RolloutsConfig()
    traffic: TrafficConfig = TrafficConfig()

    @model_validator(mode="after")
    def _webhooks_allowed(self) -> GatewayConfig:
        """Alert webhooks post only to hosts on egress.webhook_hosts (reported at the webhook's line)."""
        egress = Egress(self.egress)
        problems = [
            (("alerts", "webhooks", i, "url"), problem)
            for i, hook in enumerate(self.alerts.webhooks)
            if (problem := egress.webhook_problem(hook.url))
        ]
        raise_problems("GatewayConfig", problems)
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OPSGATE_", extra="ignore")

    project_dir: Path = Field(default_factory=Path.cwd)
    data_dir: Path | None = None
    database_url: str | None = None
    redis_url: str | None = None
    redis_prefix: str = "opsgate"  # namespace of the gateway's keys in Redis (limits, budgets)
    chroma_url: str | None = None
    api_key: str | None = None
    # The first start of a project that is not a git repository registers nothing (only committed files
    # become production); an operator sets OPSGATE_BOOTSTRAP_WORKING_TREE=true to register its working tree.
    bootstrap_working_tree: bool = False

    def resolved_data_dir(self) -> Path:
        return (self.data_dir or self.project_dir / ".opsgate").resolve()

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.resolved_data_dir() / 'opsgate.db'}"

    @property
    def config_dir(self) -> Path:
        return self.project_dir / "config"

    def load_gateway_config(self) -> GatewayConfig:
        file = self.config_dir / "gateway.yaml"
        if not file.exists():
            return GatewayConfig()
        return load_spec(file, GatewayConfig, display=self.display_path(file))

    def display_path(self, file: Path) -> str:
        """`file` as the project names it (a link is shown where it is, not where it points)."""
        try:
            return str(file.parent.resolve().joinpath(file.name).relative_to(self.project_dir.resolve()))
        except ValueError:
            return str(file)


def project_egress(project_dir: Path) -> Egress:
    """The egress rules in a project's config/gateway.yaml (defaults when the file is missing)."""
    file = project_dir / "config" / "gateway.yaml"
    if not file.exists():
        return Egress()
    return Egress(load_spec(file, GatewayConfig, display="config/gateway.yaml").egress)
