"""Tables. Schema changes go through the Alembic migrations in `gateway/db/migrations/versions/`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: DateTime(timezone=True)}


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(200))
    principal: Mapped[str] = mapped_column(String(200))
    roles: Mapped[list[Any]] = mapped_column(JSON)
    allow: Mapped[list[Any]] = mapped_column(JSON)
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(200))
    revoked_at: Mapped[datetime | None]
    revoked_by: Mapped[str | None] = mapped_column(String(200))
    created_by_key: Mapped[str | None] = mapped_column(String(32))  # the key that created this one


class ArtifactVersion(Base):
    __tablename__ = "artifact_versions"
    __table_args__ = (
        UniqueConstraint("kind", "name", "version", name="uq_artifact_version"),
        Index("ix_artifact_hash", "kind", "name", "content_hash"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[int]
    content_hash: Mapped[str] = mapped_column(String(64))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    source_path: Mapped[str | None] = mapped_column(String(500))
    git_commit: Mapped[str | None] = mapped_column(String(64))
    git_author: Mapped[str | None] = mapped_column(String(300))
    git_message: Mapped[str | None] = mapped_column(Text)
    dirty: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(200))
    files: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # everyone who committed to a file of the version since the previous version ("Name <email>")
    authors: Mapped[list[Any] | None] = mapped_column(JSON)


class Promotion(Base):
    """A request to move an alias to a version: pending -> approved -> applied, or rejected."""

    __tablename__ = "promotions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[int]
    alias: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(16))  # promote | rollback
    state: Mapped[str] = mapped_column(String(16))
    from_version: Mapped[int | None]
    requested_by: Mapped[str] = mapped_column(String(200))
    requested_at: Mapped[datetime]
    reason: Mapped[str | None] = mapped_column(Text)
    rule: Mapped[dict[str, Any]] = mapped_column(JSON)
    approvals: Mapped[list[Any]] = mapped_column(JSON)
    checks: Mapped[list[Any]] = mapped_column(JSON)
    decided_by: Mapped[str | None] = mapped_column(String(200))
    decided_at: Mapped[datetime | None]
    decision_reason: Mapped[str | None] = mapped_column(Text)
    applied_at: Mapped[datetime | None]
    pending_key: Mapped[str | None] = mapped_column(String(300), unique=True)


class EvalRun(Base):
    """One run of an eval suite against one target version, stamped with every version and hash it used."""

    __tablename__ = "eval_runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    suite: Mapped[str] = mapped_column(String(200))
    suite_path: Mapped[str | None] = mapped_column(String(500))
    suite_hash: Mapped[str | None] = mapped_column(String(64))
    dataset_hash: Mapped[str | None] = mapped_column(String(64))
    target_kind: Mapped[str | None] = mapped_column(String(16))
    target_name: Mapped[str | None] = mapped_column(String(128))
    target_version: Mapped[int | None]
    target_hash: Mapped[str | None] = mapped_column(String(64))
    target_ref: Mapped[str | None] = mapped_column(String(300))
    versions: Mapped[list[Any]] = mapped_column(JSON)
    baseline_run_id: Mapped[str | None] = mapped_column(String(32))
    mode: Mapped[str | None] = mapped_column(String(300))
    status: Mapped[str] = mapped_column(String(16))
    passed: Mapped[bool] = mapped_column(Boolean)
    cases: Mapped[int]
    errors: Mapped[int]
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    summary: Mapped[dict[str, Any]] = mapped_column(JSON)
    tool_versions: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_by: Mapped[str] = mapped_column(String(200))


class EvalResult(Base):
    """One case (one repeat) of an eval run: what was asked, answered, retrieved, and how it scored."""

    __tablename__ = "eval_results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(32))
    case_id: Mapped[str] = mapped_column(String(200))
    repeat: Mapped[int]
    request_id: Mapped[str | None] = mapped_column(String(40))
    question: Mapped[str | None] = mapped_column(Text)
    answer: Mapped[str | None] = mapped_column(Text)
    reference: Mapped[str | None] = mapped_column(Text)
    scores: Mapped[dict[str, Any]] = mapped_column(JSON)
    passed: Mapped[bool | None] = mapped_column(Boolean)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    cost_usd: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    versions: Mapped[list[Any]] = mapped_column(JSON)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)


class OnlineEvalScore(Base):
    """One metric's score of one sampled production request, with the versions that answered it."""

    __tablename__ = "online_eval_scores"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(40))
    ts: Mapped[datetime]
    prompt: Mapped[str] = mapped_column(String(128))
    prompt_version: Mapped[int]
    prompt_hash: Mapped[str] = mapped_column(String(64))
    versions: Mapped[list[Any]] = mapped_column(JSON)
    metric: Mapped[str] = mapped_column(String(64))
    score: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)


class Alias(Base):
    __tablename__ = "aliases"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int]
    updated_at: Mapped[datetime]
    updated_by: Mapped[str] = mapped_column(String(200))


class AuditEntry(Base):
    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    ts: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(300))
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    reason: Mapped[str | None] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    entry_hash: Mapped[str] = mapped_column(String(64))
    mac: Mapped[str | None] = mapped_column(String(64))  # HMAC of entry_hash with the audit key


class GatewayState(Base):
    """Generation counters: a write that changes keys or aliases bumps one; gateways poll them."""

    __tablename__ = "gateway_state"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(Integer, default=0)


class RequestLog(Base):
    __tablename__ = "request_log"
    __table_args__ = (Index("ix_request_log_ts", "ts"), Index("ix_request_log_status", "status"))

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    ts: Mapped[datetime]
    key_id: Mapped[str | None] = mapped_column(String(32))
    principal: Mapped[str | None] = mapped_column(String(200))
    route: Mapped[str] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(300))
    artifacts: Mapped[list[Any]] = mapped_column(JSON)
    upstream_model: Mapped[str | None] = mapped_column(String(300))
    deployment: Mapped[str | None] = mapped_column(String(128))
    status: Mapped[int]
    error_type: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    latency_ms: Mapped[float] = mapped_column(Float)
    upstream_ms: Mapped[float | None] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    tokens_in: Mapped[int | None]
    tokens_out: Mapped[int | None]
    cost_usd: Mapped[float | None] = mapped_column(Float)
    attempts: Mapped[list[Any]] = mapped_column(JSON)
    decisions: Mapped[list[Any]] = mapped_column(JSON)
    extra: Mapped[dict[str, Any]] = mapped_column(JSON)


class Rollout(Base):
    """A candidate version meeting an alias's traffic gradually (gateway/rollouts/service.py)."""

    __tablename__ = "rollouts"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(128))
    alias: Mapped[str] = mapped_column(String(64))
    control_version: Mapped[int]
    candidate_version: Mapped[int]
    mode: Mapped[str] = mapped_column(String(16))  # canary | shadow
    share: Mapped[float] = mapped_column(Float)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # schedule, metrics, min_sample, alpha, outcomes
    state: Mapped[str] = mapped_column(String(24))
    promotion_id: Mapped[str | None] = mapped_column(String(32))
    started_by: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime]
    activated_at: Mapped[datetime | None]  # when the candidate first served (after any approval)
    ended_at: Mapped[datetime | None]
    last_check: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    live_key: Mapped[str | None] = mapped_column(String(300), unique=True)  # kind:name@alias while live


class TrafficCall(Base):
    """A stored call (traffic store): who owns it, what it was, its lineage row; small payloads inline."""

    __tablename__ = "traffic_calls"
    __table_args__ = (
        Index("ix_traffic_owner", "principal", "kind", "seq"),
        Index("ix_traffic_expires", "expires_at"),
        Index("ix_traffic_request", "request_id"),
    )

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    request_id: Mapped[str] = mapped_column(String(40))  # the request_log row: versions, route, status
    kind: Mapped[str] = mapped_column(String(32))  # chat.completion | response | text_completion | message
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    principal: Mapped[str] = mapped_column(String(200))
    key_id: Mapped[str | None] = mapped_column(String(32))
    model: Mapped[str | None] = mapped_column(String(300))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    size_bytes: Mapped[int]
    payload: Mapped[dict[str, Any] | None] = mapped_column(
        JSON(none_as_null=True)
    )  # inline when small, else in the blob row


class TrafficPayload(Base):
    """A large stored payload (zlib-compressed JSON), kept out of the index table's pages."""

    __tablename__ = "traffic_payloads"

    call_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class AlertState(Base):
    """Where one alert rule stands for one subject (a version, or all traffic): gateway/monitoring/alerting.py."""

    __tablename__ = "alert_states"

    rule: Mapped[str] = mapped_column(String(128), primary_key=True)
    subject: Mapped[str] = mapped_column(String(300), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))  # ok | pending | firing
    since: Mapped[datetime]  # when the current state began
    value: Mapped[float | None] = mapped_column(Float)
    evaluated_at: Mapped[datetime]
    episode: Mapped[int] = mapped_column(Integer, default=0)  # counts firings: one notification each


class AlertNotification(Base):
    """The outbox: one row per notice to send (firing or resolved, per episode and receiver). The unique
    key is the de-duplication: an episode is announced once whichever replica judges it."""

    __tablename__ = "alert_notifications"
    __table_args__ = (
        UniqueConstraint("rule", "subject", "episode", "event", "receiver", name="uq_alert_notice"),
        Index("ix_alert_notifications_due", "status", "next_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rule: Mapped[str] = mapped_column(String(128))
    subject: Mapped[str] = mapped_column(String(300))
    episode: Mapped[int]
    event: Mapped[str] = mapped_column(String(16))  # firing | resolved
    receiver: Mapped[str] = mapped_column(String(128))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))  # pending | sent | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_at: Mapped[datetime]  # due time; a claim pushes it by the lease
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)


class UiSignOut(Base):
    """A dashboard session that was signed out (the sha256 of its nonce), kept until the session would
    have expired, so every replica refuses it, not only the one that answered the sign-out."""

    __tablename__ = "ui_sign_outs"

    nonce_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires: Mapped[int] = mapped_column(BigInteger, index=True)  # epoch seconds
