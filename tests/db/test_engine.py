"""The database: migrations bring SQLite and PostgreSQL to the schema the models describe, idempotently,
and several gateways starting at once on PostgreSQL migrate one at a time."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from gateway.db.engine import MIGRATIONS_DIR, make_engine, migrate, normalise_url
from gateway.db.models import Base

SPINE_TABLES = {"api_keys", "artifact_versions", "aliases", "audit_log", "gateway_state", "request_log"}


def head_revision() -> str:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def test_postgres_urls_use_psycopg3() -> None:
    assert normalise_url("postgresql://u:p@h:5432/db") == "postgresql+psycopg://u:p@h:5432/db"
    assert normalise_url("postgres://h/db") == "postgresql+psycopg://h/db"
    assert normalise_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


def test_migrations_reach_the_models_schema_idempotently(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        migrate(engine)
        migrate(engine)  # a second start changes nothing
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [
                head_revision()
            ]
            assert set(inspect(conn).get_table_names()) >= SPINE_TABLES
            diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        spine_diffs = [d for d in diffs if _table_of(d) in SPINE_TABLES]
        assert spine_diffs == [], "models and migrations disagree"
    finally:
        engine.dispose()


def _table_of(diff: Any) -> str | None:
    op = diff[0] if isinstance(diff, list) else diff
    for item in op[1:] if isinstance(op, tuple) else ():
        name = getattr(item, "name", None) if not isinstance(item, str) else None
        table = getattr(item, "table", None)
        if table is not None:
            return str(table.name)
        if isinstance(item, str):
            return item
        if name:
            return str(name)
    return None


def test_sqlite_runs_in_wal_mode(tmp_path: Any) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'nested' / 'x.db'}")
    try:
        migrate(engine)
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 10000
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_gateways_starting_at_once_migrate_one_at_a_time(new_pg_database: Callable[[], str]) -> None:
    url = new_pg_database()
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        engine = make_engine(url)
        try:
            barrier.wait()
            migrate(engine)
        except BaseException as exc:
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [
                head_revision()
            ]
    finally:
        engine.dispose()
