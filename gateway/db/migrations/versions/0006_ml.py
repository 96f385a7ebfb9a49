"""Classic ML: predictions (inputs and outputs, for drift and feedback joins), feedback, data-quality
events, monitor reports.

Revision ID: 0006_ml
Revises: 0005_evaluation
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_ml"
down_revision = "0005_evaluation"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "ml_predictions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("request_id", sa.String(40), nullable=False),
        sa.Column("ts", TS, nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("inputs", sa.JSON, nullable=False),
        sa.Column("label", sa.JSON),
        sa.Column("score", sa.Float),
        sa.Column("value", sa.Float),
        sa.Column("flags", sa.JSON),
    )
    op.create_index("ix_ml_predictions_version_ts", "ml_predictions", ["name", "version", "ts"])
    op.create_table(
        "ml_feedback",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("prediction_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("ts", TS, nullable=False),
        sa.Column("label", sa.JSON, nullable=False),
        sa.Column("key_id", sa.String(32)),
    )
    op.create_index("ix_ml_feedback_prediction", "ml_feedback", ["prediction_id"])
    op.create_index("ix_ml_feedback_name", "ml_feedback", ["name"])
    op.create_table(
        "ml_quality_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(40), nullable=False),
        sa.Column("ts", TS, nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("violations", sa.JSON, nullable=False),
    )
    op.create_index("ix_ml_quality_version_ts", "ml_quality_events", ["name", "version", "ts"])
    op.create_table(
        "ml_reports",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("ts", TS, nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("breached", sa.Boolean, nullable=False),
        sa.Column("result", sa.JSON, nullable=False),
    )
    op.create_index("ix_ml_reports_version_kind", "ml_reports", ["name", "version", "kind", "ts"])
