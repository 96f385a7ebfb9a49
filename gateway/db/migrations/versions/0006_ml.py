"""Classic ML predictions, feedback, monitoring (placeholder: filled by the issue that needs it).

Revision ID: 0006_ml
Revises: 0005_evaluation
"""

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = "0006_ml"
down_revision = "0005_evaluation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass
