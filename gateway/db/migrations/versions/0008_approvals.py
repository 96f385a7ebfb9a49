"""Approvals and the audit chain (issue 11): a version's authors, the key that created each key, and the
keyed MAC of each audit entry.

Revision ID: 0008_approvals
Revises: 0006_ml
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_approvals"
down_revision = "0007_traffic_store"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # everyone who committed to any file of the version since the previous version ("Name <email>")
    op.add_column("artifact_versions", sa.Column("authors", sa.JSON, nullable=True))
    # the id of the key that created this key (None: created locally, or before this column existed)
    op.add_column("api_keys", sa.Column("created_by_key", sa.String(32), nullable=True))
    # HMAC-SHA256 of the entry's hash with the audit key (None: written before the chain was keyed)
    op.add_column("audit_log", sa.Column("mac", sa.String(64), nullable=True))


def downgrade() -> None:
    op.drop_column("audit_log", "mac")
    op.drop_column("api_keys", "created_by_key")
    op.drop_column("artifact_versions", "authors")
