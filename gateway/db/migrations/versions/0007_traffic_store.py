"""Traffic store: stored calls (owner, kind, lineage request id, metadata, expiry) and their large payloads.

Revision ID: 0007_traffic_store
Revises: 0006_ml
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_traffic_store"
down_revision = "0006_ml"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "traffic_calls",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("request_id", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("principal", sa.String(200), nullable=False),
        sa.Column("key_id", sa.String(32)),
        sa.Column("model", sa.String(300)),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("size_bytes", sa.Integer, nullable=False),
        sa.Column("payload", sa.JSON),
    )
    op.create_index("ix_traffic_owner", "traffic_calls", ["principal", "kind", "seq"])
    op.create_index("ix_traffic_expires", "traffic_calls", ["expires_at"])
    op.create_index("ix_traffic_request", "traffic_calls", ["request_id"])
    op.create_table(
        "traffic_payloads",
        sa.Column("call_id", sa.String(64), primary_key=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("traffic_payloads")
    op.drop_table("traffic_calls")
