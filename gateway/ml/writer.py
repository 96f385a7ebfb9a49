"""Prediction payloads, feedback and data-quality events, written off the request path in batches.

The shared batch writer (gateway/db/batchwriter.py), as for the request log: a request puts its rows on
a bounded queue and moves on; batches are grouped by table and inserted in one transaction.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, insert

from gateway.db.batchwriter import BatchWriter
from gateway.db.models import Base


@dataclass(slots=True)
class Batch:
    """Rows for one table from one request."""

    table: type[Base]
    rows: list[dict[str, Any]]


def insert_batches(conn: Connection, batches: list[Batch]) -> None:
    by_table: dict[type[Base], list[dict[str, Any]]] = defaultdict(list)
    for batch in batches:
        by_table[batch.table].extend(batch.rows)
    for table, rows in by_table.items():
        conn.execute(insert(table), rows)


class MLWriter(BatchWriter[Batch]):
    """Items are one request's rows for one table; sizes, drops and backlog count rows."""

    def __init__(self, engine: Engine, *, queue_size: int, batch_size: int, flush_interval_s: float) -> None:
        super().__init__(
            engine,
            insert_batches,
            name="ml-log",
            queue_size=queue_size,
            batch_size=batch_size,
            flush_interval_s=flush_interval_s,
            rows_of=lambda batch: len(batch.rows),
        )
