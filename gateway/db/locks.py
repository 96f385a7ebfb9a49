"""Advisory locks: steps that several gateways sharing one PostgreSQL database must take one at a time.

Replicas started together on a fresh database (a compose file or a Helm release with N replicas) all run
the first-start bootstrap: register the project's artifacts, create the first admin key, build indexes
that have no version. Without a lock they race (a unique-key violation stops all but one, or two builds
publish over each other's chroma collection). Holding `bootstrap_lock` the first replica does the work;
the others wait, then find it done. The lock is a session lock on a connection of its own, released when
the block ends or, if the process dies, when PostgreSQL sees the connection close.

SQLite is one host's file and serialises writers itself: the lock is a no-op there.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, text

PG_BOOTSTRAP_LOCK = 7_461_003  # advisory lock id (gateway/db/engine.py's migration lock is 7_461_002)
PG_ROLLOUT_LOCK = 7_461_004  # the rollout evaluator's turn (gateway/rollouts/evaluator.py)
PG_ALERTS_LOCK = 7_461_005  # the alert rules' judge (gateway/monitoring/alerting.py)


@contextmanager
def bootstrap_lock(engine: Engine) -> Iterator[None]:
    """Hold the cluster-wide first-start lock for the duration of the block (PostgreSQL only)."""
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": PG_BOOTSTRAP_LOCK})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": PG_BOOTSTRAP_LOCK})
            conn.commit()


@contextmanager
def try_lock(engine: Engine, key: int) -> Iterator[bool]:
    """Take a cluster-wide lock if free, without waiting: yields whether this process holds it.
    On SQLite (one host) it is always taken: state changes compare-and-set their rows anyway."""
    if engine.dialect.name != "postgresql":
        yield True
        return
    with engine.connect() as conn:
        got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
        conn.commit()
        try:
            yield got
        finally:
            if got:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
