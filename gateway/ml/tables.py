"""The ML tables (created by migration 0006_ml): predictions with the inputs drift and feedback need,
feedback (ground truth), data-quality events, and monitor reports. Request-level facts (who, latency,
status, versions) stay in the shared request log; rows here carry its request id."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Float, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from gateway.db.models import Base


class MLPrediction(Base):
    __tablename__ = "ml_predictions"
    __table_args__ = (Index("ix_ml_predictions_version_ts", "name", "version", "ts"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # "<request id>:<row>"
    request_id: Mapped[str] = mapped_column(String(40))
    ts: Mapped[datetime]
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    content_hash: Mapped[str] = mapped_column(String(64))
    inputs: Mapped[dict[str, Any]] = mapped_column(JSON)
    label: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    flags: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)


class MLFeedback(Base):
    __tablename__ = "ml_feedback"
    __table_args__ = (
        Index("ix_ml_feedback_prediction", "prediction_id"),
        Index("ix_ml_feedback_name", "name"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    prediction_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(128))
    ts: Mapped[datetime]
    label: Mapped[Any] = mapped_column(JSON)
    key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)


class MLQualityEvent(Base):
    __tablename__ = "ml_quality_events"
    __table_args__ = (Index("ix_ml_quality_version_ts", "name", "version", "ts"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(40))
    ts: Mapped[datetime]
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(16))  # reject | flag
    rows: Mapped[int] = mapped_column(Integer)
    violations: Mapped[list[Any]] = mapped_column(JSON)


class MLReport(Base):
    __tablename__ = "ml_reports"
    __table_args__ = (Index("ix_ml_reports_version_kind", "name", "version", "kind", "ts"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[datetime]
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))  # drift | fairness | accuracy | retrain
    breached: Mapped[bool] = mapped_column(Boolean)
    result: Mapped[dict[str, Any]] = mapped_column(JSON)
