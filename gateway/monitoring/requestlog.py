"""The request log: one row per request, written off the request path in batches.

Requests put a finished row on a bounded queue and move on (no DB work, no wait). A writer task takes
rows in batches and inserts each batch in one transaction in a worker thread, so a row is written whole
or not at all. A full queue drops the row and counts it (exposed in /metrics and /readyz); a failing
database is retried with back-off while rows keep queueing; a batch the database refuses as data (which
no retry can fix) is written row by row and the bad rows are dropped and counted, so one row never wedges
the log. Shutdown flushes what is queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, String, insert
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError

from gateway.db.models import RequestLog

log = logging.getLogger("opsgate.requestlog")
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
        return values


@dataclass
class WriterStats:
    queued: int = 0
    written: int = 0
    dropped: int = 0
    failed_batches: int = 0
    last_error: str | None = None


class RequestLogWriter:
    def __init__(
        self,
        engine: Engine,
        *,
        queue_size: int,
        batch_size: int,
        flush_interval_s: float,
        on_written: Callable[[list[LogRow]], None] | None = None,
    ) -> None:
        self.engine = engine
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.stats = WriterStats()
        self._queue: asyncio.Queue[LogRow] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task[None] | None = None
        self._inflight: asyncio.Future[None] | None = None
        self._pending: list[LogRow] = []
        self._on_written = on_written

    def submit(self, row: LogRow) -> bool:
        """Never blocks. False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(row)
        except asyncio.QueueFull:
            self.stats.dropped += 1
            return False
        self.stats.queued += 1
        return True

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="opsgate-request-log")

    async def stop(self) -> None:
        """Finish the batch in flight, flush everything queued, then stop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._inflight is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._inflight
            self._inflight = None
        rows, self._pending = self._pending, []
        rows.extend(self._drain(self._queue.qsize()))
        for i in range(0, len(rows), self.batch_size):
            await self._write(rows[i : i + self.batch_size], final=True)

    def _drain(self, limit: int) -> list[LogRow]:
        rows: list[LogRow] = []
        while len(rows) < limit:
            try:
                rows.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                break
        return rows

    async def _run(self) -> None:
        while True:
            rows = await self._collect()
            # Shielded: a stop() during the insert lets it finish, so no row is lost or written twice.
            self._inflight = asyncio.ensure_future(self._write(rows))
            await asyncio.shield(self._inflight)
            self._inflight = None

    async def _collect(self) -> list[LogRow]:
        loop = asyncio.get_running_loop()
        rows = self._pending
        self._pending = []
        try:
            if not rows:
                rows.append(await self._queue.get())
            deadline = loop.time() + self.flush_interval_s
            while len(rows) < self.batch_size:
                rows.extend(self._drain(self.batch_size - len(rows)))
                remaining = deadline - loop.time()
                if len(rows) >= self.batch_size or remaining <= 0:
                    break
                try:
                    rows.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
        except asyncio.CancelledError:
            self._pending = rows  # taken from the queue but not written: stop() writes them
            raise
        return rows

    async def _write(self, rows: list[LogRow], *, final: bool = False) -> None:
        delay = 0.2
        while True:
            try:
                await asyncio.to_thread(self._insert, rows)
            except (DataError, IntegrityError) as exc:
                self._failed(exc)
                await self._write_each(rows)
                return
            except SQLAlchemyError as exc:
                self.stats.failed_batches += 1
                self.stats.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                log.warning(
                    "request log write failed (%d rows), retrying: %s", len(rows), self.stats.last_error
                )
                if final:
                    self.stats.dropped += len(rows)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self.stats.written += len(rows)
            self.stats.last_error = None
            if self._on_written is not None:
                self._on_written(rows)
            return

    def _failed(self, exc: SQLAlchemyError) -> None:
        self.stats.failed_batches += 1
        self.stats.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"

    async def _write_each(self, rows: list[LogRow]) -> None:
        """The database refused the batch's data: retrying cannot help, so write what it accepts."""
        written: list[LogRow] = []
        for row in rows:
            try:
                await asyncio.to_thread(self._insert, [row])
            except SQLAlchemyError as exc:
                self._failed(exc)
                self.stats.dropped += 1
                log.error(
                    "request log row %s refused by the database, dropped: %s", row.id, self.stats.last_error
                )
                continue
            written.append(row)
        self.stats.written += len(written)
        if written and self._on_written is not None:
            self._on_written(written)

    def _insert(self, rows: list[LogRow]) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(RequestLog), [r.as_values() for r in rows])
