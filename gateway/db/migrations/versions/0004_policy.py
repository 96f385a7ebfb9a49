"""Policy decisions, budgets (placeholder: filled by the issue that needs it).

Revision ID: 0004_policy
Revises: 0003_retrieval
"""

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = "0004_policy"
down_revision = "0003_retrieval"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass
