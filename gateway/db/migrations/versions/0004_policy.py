"""Policy: no tables of its own.

Decisions are stored with each request log row (`request_log.decisions`, from 0001); shared rate limits
and budgets live in Redis; in-process budgets are read back from `request_log.cost_usd` at start-up.

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
