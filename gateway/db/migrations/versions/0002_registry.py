"""Registry: promotions, and the text of files a version references (prompt template files).

Revision ID: 0002_registry
Revises: 0001_spine
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_registry"
down_revision = "0001_spine"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("artifact_versions") as batch:
        batch.add_column(sa.Column("files", sa.JSON, nullable=True))
    op.create_table(
        "promotions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("from_version", sa.Integer),
        sa.Column("requested_by", sa.String(200), nullable=False),
        sa.Column("requested_at", TS, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("rule", sa.JSON, nullable=False),
        sa.Column("approvals", sa.JSON, nullable=False),
        sa.Column("checks", sa.JSON, nullable=False),
        sa.Column("decided_by", sa.String(200)),
        sa.Column("decided_at", TS),
        sa.Column("decision_reason", sa.Text),
        sa.Column("applied_at", TS),
        sa.Column("pending_key", sa.String(300), unique=True),
    )
    op.create_index("ix_promotions_target", "promotions", ["kind", "name", "alias"])
