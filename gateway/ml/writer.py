"""Prediction payloads, feedback and data-quality events, written off the request path in batches.

The shared batch writer (gateway/db/batchwriter.py), as for the request log: a request puts its rows on
a bounded queue and moves on; batches are grouped by table and inserted in one transaction. While the
database fails they go to the spool (`<data dir>/spool/ml-log/`) and are replayed when it is back, with
insert-or-ignore (prediction ids are `<request id>:<row>`: written once).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, Table, insert

from gateway.db.batchwriter import BatchWriter, SpoolCodec
from gateway.db.models import Base
from gateway.db.spool import dump_row, insert_ignore, load_row


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


def _table(batch: Batch) -> Table:
    table: Table = batch.table.__table__  # type: ignore[assignment]
    return table


def insert_batches_ignore(conn: Connection, batches: list[Batch]) -> None:
    by_table: dict[type[Base], list[dict[str, Any]]] = defaultdict(list)
    for batch in batches:
        by_table[batch.table].extend(batch.rows)
    for table, rows in by_table.items():
        insert_ignore(conn, table.__table__, rows)  # type: ignore[arg-type]


def _encode(batch: Batch) -> bytes:
    return (
        b'{"t":' + orjson.dumps(_table(batch).name) + b',"r":[' + b",".join(map(dump_row, batch.rows)) + b"]}"
    )


def _decode(line: bytes) -> Batch:
    data = orjson.loads(line)
    cls = next(m.class_ for m in Base.registry.mappers if m.class_.__table__.name == data["t"])
    table = cls.__table__
    return Batch(cls, [load_row(table, orjson.dumps(row)) for row in data["r"]])


CODEC = SpoolCodec[Batch](encode=_encode, decode=_decode, insert_ignore=insert_batches_ignore)


class MLWriter(BatchWriter[Batch]):
    """Items are one request's rows for one table; sizes, drops and backlog count rows."""

    def __init__(
        self,
        engine: Engine,
        *,
        queue_size: int,
        batch_size: int,
        flush_interval_s: float,
        spool_dir: Path | None = None,
    ) -> None:
        super().__init__(
            engine,
            insert_batches,
            name="ml-log",
            queue_size=queue_size,
            batch_size=batch_size,
            flush_interval_s=flush_interval_s,
            rows_of=lambda batch: len(batch.rows),
            spool_dir=spool_dir,
            codec=CODEC,
        )
