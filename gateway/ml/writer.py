"""Prediction payloads, feedback and data-quality events, written off the request path in batches.

The same pattern as the request log (gateway/monitoring/requestlog.py): a request puts its rows on a
bounded queue and moves on; a task takes what is queued, groups it by table and inserts it in one
transaction in a worker thread; a failing database is retried with back-off; a full queue drops and
counts; shutdown flushes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, insert
from sqlalchemy.exc import SQLAlchemyError

from gateway.db.models import Base

log = logging.getLogger("opsgate.ml.writer")


@dataclass(slots=True)
class Batch:
    """Rows for one table from one request."""

    table: type[Base]
    rows: list[dict[str, Any]]


@dataclass
class MLWriterStats:
    written: int = 0
    dropped: int = 0
    failed_batches: int = 0
    last_error: str | None = None


class MLWriter:
    def __init__(self, engine: Engine, *, queue_size: int, batch_size: int, flush_interval_s: float) -> None:
        self.engine = engine
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.stats = MLWriterStats()
        self._queue: asyncio.Queue[Batch] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task[None] | None = None
        self._pending: list[Batch] = []
        self._idle = asyncio.Event()
        self._idle.set()

    def submit(self, batch: Batch) -> bool:
        try:
            self._queue.put_nowait(batch)
        except asyncio.QueueFull:
            self.stats.dropped += len(batch.rows)
            return False
        self._idle.clear()
        return True

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="opsgate-ml-writer")

    async def flush(self, wait_s: float = 10) -> None:
        """Wait until everything queued so far is written (for the monitor and tests)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), wait_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        batches, self._pending = self._pending, []
        while not self._queue.empty():
            batches.append(self._queue.get_nowait())
        if batches:
            await self._write(batches, final=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batches = self._pending
            self._pending = []
            try:
                if not batches:
                    batches.append(await self._queue.get())
                deadline = loop.time() + self.flush_interval_s
                while sum(len(b.rows) for b in batches) < self.batch_size:
                    while not self._queue.empty():
                        batches.append(self._queue.get_nowait())
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        batches.append(await asyncio.wait_for(self._queue.get(), remaining))
                    except TimeoutError:
                        break
            except asyncio.CancelledError:
                self._pending = batches
                raise
            await asyncio.shield(self._write(batches))
            if self._queue.empty():
                self._idle.set()

    async def _write(self, batches: list[Batch], *, final: bool = False) -> None:
        delay = 0.2
        while True:
            try:
                await asyncio.to_thread(self._insert, batches)
            except SQLAlchemyError as exc:
                self.stats.failed_batches += 1
                self.stats.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                log.warning("ML write failed (%d batches), retrying: %s", len(batches), self.stats.last_error)
                if final:
                    self.stats.dropped += sum(len(b.rows) for b in batches)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self.stats.written += sum(len(b.rows) for b in batches)
            self.stats.last_error = None
            return

    def _insert(self, batches: list[Batch]) -> None:
        by_table: dict[type[Base], list[dict[str, Any]]] = defaultdict(list)
        for batch in batches:
            by_table[batch.table].extend(batch.rows)
        with self.engine.begin() as conn:
            for table, rows in by_table.items():
                conn.execute(insert(table), rows)
