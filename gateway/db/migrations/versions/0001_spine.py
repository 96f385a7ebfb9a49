"""The spine: API keys, artifact versions and aliases, audit log, state counters, request log.

Revision ID: 0001_spine
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001_spine"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("principal", sa.String(200), nullable=False),
        sa.Column("roles", sa.JSON, nullable=False),
        sa.Column("allow", sa.JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
        sa.Column("revoked_by", sa.String(200), nullable=True),
    )
    op.create_table(
        "artifact_versions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("source_path", sa.String(500)),
        sa.Column("git_commit", sa.String(64)),
        sa.Column("git_author", sa.String(300)),
        sa.Column("git_message", sa.Text),
        sa.Column("dirty", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.UniqueConstraint("kind", "name", "version", name="uq_artifact_version"),
    )
    op.create_index("ix_artifact_hash", "artifact_versions", ["kind", "name", "content_hash"])
    op.create_table(
        "aliases",
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("alias", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("updated_by", sa.String(200), nullable=False),
    )
    op.create_table(
        "audit_log",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("ts", TS, nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(300), nullable=False),
        sa.Column("before", sa.JSON),
        sa.Column("after", sa.JSON),
        sa.Column("reason", sa.Text),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("entry_hash", sa.String(64), nullable=False),
    )
    op.create_table(
        "gateway_state",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_table(
        "request_log",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("ts", TS, nullable=False),
        sa.Column("key_id", sa.String(32)),
        sa.Column("principal", sa.String(200)),
        sa.Column("route", sa.String(64), nullable=False),
        sa.Column("model", sa.String(300)),
        sa.Column("artifacts", sa.JSON, nullable=False),
        sa.Column("upstream_model", sa.String(300)),
        sa.Column("deployment", sa.String(128)),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("error_type", sa.String(64)),
        sa.Column("error_message", sa.Text),
        sa.Column("stream", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("upstream_ms", sa.Float),
        sa.Column("ttft_ms", sa.Float),
        sa.Column("tokens_in", sa.Integer),
        sa.Column("tokens_out", sa.Integer),
        sa.Column("cost_usd", sa.Float),
        sa.Column("attempts", sa.JSON, nullable=False),
        sa.Column("decisions", sa.JSON, nullable=False),
        sa.Column("extra", sa.JSON, nullable=False),
    )
    op.create_index("ix_request_log_ts", "request_log", ["ts"])
    op.create_index("ix_request_log_status", "request_log", ["status"])
