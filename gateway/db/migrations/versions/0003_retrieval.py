"""Retrieval: one row per index version build (its file manifest and build statistics).

Revision ID: 0003_retrieval
Revises: 0002_registry
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_retrieval"
down_revision = "0002_registry"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "index_builds",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("collection", sa.String(512), nullable=False),
        sa.Column("manifest", sa.JSON, nullable=False),
        sa.Column("stats", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.UniqueConstraint("name", "version", name="uq_index_build_version"),
    )
