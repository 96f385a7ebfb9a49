"""Alert rules: per-rule state (ok, pending, firing) and the notification outbox.

Revision ID: 0010_alerts
Revises: 0009_rollouts
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_alerts"
down_revision = "0009_rollouts"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "alert_states",
        sa.Column("rule", sa.String(128), primary_key=True),
        sa.Column("subject", sa.String(300), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("since", TS, nullable=False),
        sa.Column("value", sa.Float),
        sa.Column("evaluated_at", TS, nullable=False),
        sa.Column("episode", sa.Integer, nullable=False),
    )
    op.create_table(
        "alert_notifications",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("rule", sa.String(128), nullable=False),
        sa.Column("subject", sa.String(300), nullable=False),
        sa.Column("episode", sa.Integer, nullable=False),
        sa.Column("event", sa.String(16), nullable=False),
        sa.Column("receiver", sa.String(128), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_at", TS, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("sent_at", TS),
        sa.Column("last_error", sa.Text),
        sa.UniqueConstraint("rule", "subject", "episode", "event", "receiver", name="uq_alert_notice"),
    )
    op.create_index("ix_alert_notifications_due", "alert_notifications", ["status", "next_at"])


def downgrade() -> None:
    op.drop_index("ix_alert_notifications_due", table_name="alert_notifications")
    op.drop_table("alert_notifications")
    op.drop_table("alert_states")
