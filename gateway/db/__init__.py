"""Database: SQLAlchemy 2 tables, the engine, and Alembic migrations (SQLite default, PostgreSQL)."""
