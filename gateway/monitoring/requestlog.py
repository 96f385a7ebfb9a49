"""The request log: one row per request, written off the request path in batches.

Requests put a finished row on a bounded queue and move on (no DB work, no wait); the shared batch writer
(gateway/db/batchwriter.py) inserts the rows in batches, whole or not at all, counts drops (exposed in
/metrics and /readyz), spools rows to `<data dir>/spool/request-log/` while the database fails and replays
them exactly once (insert-or-ignore on the request id) when it is back, writes row by row what the
database refuses as data, and flushes or spools on shutdown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, String, Table, insert

from gateway.db.batchwriter import BatchWriter, SpoolCodec
from gateway.db.models import RequestLog
from gateway.db.spool import dump_row, insert_ignore, load_row

TABLE: Table = RequestLog.__table__  # type: ignore[assignment]

COLUMNS = frozenset(c.name for c in RequestLog.__table__.columns)
LENGTHS = {
    c.name: c.type.length
    for c in RequestLog.__table__.columns
    if isinstance(c.type, String) and c.type.length is not None
}


@dataclass(slots=True)
class LogRow:
    id: str
    ts: datetime
    route: str
    status: int
    latency_ms: float
    key_id: str | None = None
    principal: str | None = None
    model: str | None = None
    artifacts: list[str] = field(default_factory=list)
    upstream_model: str | None = None
    deployment: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    stream: bool = False
    upstream_ms: float | None = None
    ttft_ms: float | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost_usd: float | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_values(self) -> dict[str, Any]:
        values = {name: getattr(self, name) for name in COLUMNS}
        for name, length in LENGTHS.items():  # text from the request (a model name) can be any length
            value = values[name]
            if isinstance(value, str) and len(value) > length:
                values[name] = value[:length]
        for name, value in values.items():  # PostgreSQL text holds no NUL: a caller's model name may
            if isinstance(value, str) and "\x00" in value:
                values[name] = value.replace("\x00", "\\x00")
        return values


def insert_rows(conn: Connection, rows: list[LogRow]) -> None:
    conn.execute(insert(RequestLog), [r.as_values() for r in rows])


def insert_rows_ignore(conn: Connection, rows: list[LogRow]) -> None:
    """The spool's replay: a row whose request id is already logged is skipped (written exactly once)."""
    insert_ignore(conn, TABLE, [r.as_values() for r in rows])


CODEC = SpoolCodec[LogRow](
    encode=lambda row: dump_row(row.as_values()),
    decode=lambda line: LogRow(**load_row(TABLE, line)),
    insert_ignore=insert_rows_ignore,
)


class RequestLogWriter(BatchWriter[LogRow]):
    """The request log's writer: one LogRow per item (see gateway/db/batchwriter.py for the mechanics)."""

    def __init__(
        self,
        engine: Engine,
        *,
        queue_size: int,
        batch_size: int,
        flush_interval_s: float,
        spool_dir: Path | None = None,
        spool_max_bytes: int = 1 << 30,
        stop_deadline_s: float = 5.0,
    ) -> None:
        super().__init__(
            engine,
            insert_rows,
            name="request-log",
            queue_size=queue_size,
            batch_size=batch_size,
            flush_interval_s=flush_interval_s,
            spool_dir=spool_dir,
            spool_max_bytes=spool_max_bytes,
            codec=CODEC,
            stop_deadline_s=stop_deadline_s,
        )
