"""A generation counter: every write that changes what gateways cache (keys, aliases, versions) bumps it.

Gateways poll it (one indexed row, off the request path) and reload their caches when it moves, so a
change made by any process (CLI, admin API, another replica) reaches every gateway within the poll
interval.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, CursorResult, insert, select, update
from sqlalchemy.orm import Session

from gateway.db.models import GatewayState

GENERATION = "generation"


def bump_generation(conn: Session) -> None:
    result: CursorResult[Any] = conn.execute(  # type: ignore[assignment]
        update(GatewayState).where(GatewayState.key == GENERATION).values(value=GatewayState.value + 1)
    )
    if result.rowcount == 0:
        conn.execute(insert(GatewayState).values(key=GENERATION, value=1))


def read_generation(conn: Session) -> int:
    return read_counter(conn, GENERATION)


def read_counter(conn: Session, key: str) -> int:
    value = conn.execute(select(GatewayState.value).where(GatewayState.key == key)).scalar()
    return int(value or 0)


def set_counter(conn: Session, key: str, value: int) -> None:
    result: CursorResult[Any] = conn.execute(  # type: ignore[assignment]
        update(GatewayState).where(GatewayState.key == key).values(value=value)
    )
    if result.rowcount == 0:
        conn.execute(insert(GatewayState).values(key=key, value=value))


def lock_key(conn: Session | Connection, key: str) -> None:
    """Serialise a read-then-write across processes and replicas until the transaction ends.

    Run it first in the transaction: it writes the key's row (PostgreSQL holds a row lock, SQLite its
    database write lock, until commit), so a second process doing the same waits, then reads what the
    first committed. The first-ever insert of a key can race: the loser gets an IntegrityError, and a
    retry of its transaction finds the row."""
    result: CursorResult[Any] = conn.execute(  # type: ignore[assignment]
        update(GatewayState).where(GatewayState.key == key).values(value=GatewayState.value + 1)
    )
    if result.rowcount == 0:
        conn.execute(insert(GatewayState).values(key=key, value=1))


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes, PostgreSQL aware ones: make both aware UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
