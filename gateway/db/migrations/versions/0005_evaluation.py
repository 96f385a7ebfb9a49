"""Eval runs (the registry's promotion rule reads them); case results and online scores come with evals.

Revision ID: 0005_evaluation
Revises: 0004_policy
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_evaluation"
down_revision = "0004_policy"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "eval_runs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("suite", sa.String(200), nullable=False),
        sa.Column("target_kind", sa.String(16)),
        sa.Column("target_name", sa.String(128)),
        sa.Column("target_version", sa.Integer),
        sa.Column("target_hash", sa.String(64)),
        sa.Column("passed", sa.Boolean, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("summary", sa.JSON, nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
    )
    op.create_index("ix_eval_runs_target", "eval_runs", ["target_kind", "target_name", "target_version"])
