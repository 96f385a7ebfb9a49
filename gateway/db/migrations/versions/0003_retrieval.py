"""Retrieval indexes (builds, chunks metadata) (placeholder: filled by the issue that needs it).

Revision ID: 0003_retrieval
Revises: 0002_registry
"""

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = "0003_retrieval"
down_revision = "0002_registry"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass
