"""Dashboard sign-outs, shared by replicas: a signed-out session is refused by every gateway.

Revision ID: 0011_ui_sign_outs
Revises: 0010_alerts
"""

import sqlalchemy as sa
from alembic import op

revision = "0011_ui_sign_outs"
down_revision = "0010_alerts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ui_sign_outs",
        sa.Column("nonce_hash", sa.String(64), primary_key=True),
        sa.Column("expires", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_ui_sign_outs_expires", "ui_sign_outs", ["expires"])


def downgrade() -> None:
    op.drop_index("ix_ui_sign_outs_expires", table_name="ui_sign_outs")
    op.drop_table("ui_sign_outs")
