"""Evaluation: eval runs (the registry's promotion rule reads them), every case's result, online scores.

Revision ID: 0005_evaluation
Revises: 0004_policy
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_evaluation"
down_revision = "0004_policy"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "eval_runs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("suite", sa.String(200), nullable=False),
        sa.Column("suite_path", sa.String(500)),
        sa.Column("suite_hash", sa.String(64)),
        sa.Column("dataset_hash", sa.String(64)),
        sa.Column("target_kind", sa.String(16)),
        sa.Column("target_name", sa.String(128)),
        sa.Column("target_version", sa.Integer),
        sa.Column("target_hash", sa.String(64)),
        sa.Column("target_ref", sa.String(300)),
        sa.Column("versions", sa.JSON, nullable=False),
        sa.Column("baseline_run_id", sa.String(32)),
        sa.Column("mode", sa.String(300)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("passed", sa.Boolean, nullable=False),
        sa.Column("cases", sa.Integer, nullable=False),
        sa.Column("errors", sa.Integer, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("summary", sa.JSON, nullable=False),
        sa.Column("tool_versions", sa.JSON, nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
    )
    op.create_index("ix_eval_runs_target", "eval_runs", ["target_kind", "target_name", "target_version"])
    op.create_index("ix_eval_runs_suite", "eval_runs", ["suite", "started_at"])
    op.create_table(
        "eval_results",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(32), sa.ForeignKey("eval_runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("case_id", sa.String(200), nullable=False),
        sa.Column("repeat", sa.Integer, nullable=False),
        sa.Column("request_id", sa.String(40)),
        sa.Column("question", sa.Text),
        sa.Column("answer", sa.Text),
        sa.Column("reference", sa.Text),
        sa.Column("scores", sa.JSON, nullable=False),
        sa.Column("passed", sa.Boolean),
        sa.Column("latency_ms", sa.Float),
        sa.Column("cost_usd", sa.Float),
        sa.Column("error", sa.Text),
        sa.Column("versions", sa.JSON, nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
    )
    op.create_index("ix_eval_results_run", "eval_results", ["run_id", "case_id"])
    op.create_table(
        "online_eval_scores",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(40), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("prompt", sa.String(128), nullable=False),
        sa.Column("prompt_version", sa.Integer, nullable=False),
        sa.Column("prompt_hash", sa.String(64), nullable=False),
        sa.Column("versions", sa.JSON, nullable=False),
        sa.Column("metric", sa.String(64), nullable=False),
        sa.Column("score", sa.Float),
        sa.Column("error", sa.Text),
    )
    op.create_index(
        "ix_online_eval_scores_key", "online_eval_scores", ["prompt", "prompt_version", "metric", "ts"]
    )
    op.create_index("ix_online_eval_scores_request", "online_eval_scores", ["request_id"])
