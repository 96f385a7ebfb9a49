"""Rollouts: a candidate version meets an alias's traffic gradually and is judged by a sequential test.

Revision ID: 0009_rollouts
Revises: 0008_approvals
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_rollouts"
down_revision = "0008_approvals"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("control_version", sa.Integer, nullable=False),
        sa.Column("candidate_version", sa.Integer, nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("share", sa.Float, nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("state", sa.String(24), nullable=False),
        sa.Column("promotion_id", sa.String(32)),
        sa.Column("started_by", sa.String(200), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("activated_at", TS),
        sa.Column("ended_at", TS),
        sa.Column("last_check", sa.JSON),
        sa.Column("live_key", sa.String(300), unique=True),
    )
    op.create_index("ix_rollouts_kind_name", "rollouts", ["kind", "name"])


def downgrade() -> None:
    op.drop_index("ix_rollouts_kind_name", table_name="rollouts")
    op.drop_table("rollouts")
