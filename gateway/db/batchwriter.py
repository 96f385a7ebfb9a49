"""Writes off the request path: a bounded queue, batched inserts in a worker thread, counted drops.

Used by the request log and by the ML prediction log. A request puts an item on the queue and moves on (no
DB work, no wait). A task takes items in batches (up to `batch_size` rows, or what arrived within
`flush_interval_s`) and inserts each batch in one transaction in a worker thread, so rows are written whole
or not at all. A full queue drops the item and counts it; a failing database is retried with back-off while
items keep queueing; a batch the database refuses as data (too long, constraint) is written item by item so
one bad row cannot wedge the log. Shutdown finishes the batch in flight and flushes what is queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError

T = TypeVar("T")
log = logging.getLogger("opsgate.db.writer")


@dataclass
class WriterStats:
    written: int = 0
    dropped: int = 0
    failed_batches: int = 0
    last_error: str | None = None


class BatchWriter(Generic[T]):
    def __init__(
        self,
        engine: Engine,
        insert: Callable[[Connection, list[T]], None],
        *,
        name: str,
        queue_size: int,
        batch_size: int,
        flush_interval_s: float,
        rows_of: Callable[[T], int] = lambda _item: 1,
    ) -> None:
        self.engine = engine
        self.name = name
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.stats = WriterStats()
        self._insert_rows = insert
        self._rows_of = rows_of
        self._queue: asyncio.Queue[T] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task[None] | None = None
        self._inflight: asyncio.Future[None] | None = None
        self._pending: list[T] = []
        self._idle = asyncio.Event()
        self._idle.set()
        self._outstanding = 0

    # -- the request side ----------------------------------------------------------------------------

    def submit(self, item: T) -> bool:
        """Never blocks. False (and the item's rows counted as dropped) when the queue is full."""
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.stats.dropped += self._rows_of(item)
            return False
        self._outstanding += self._rows_of(item)
        self._idle.clear()
        return True

    @property
    def backlog(self) -> int:
        """Rows accepted but not yet written (queued, or in a batch being written)."""
        return self._outstanding

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    # -- life cycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"opsgate-{self.name}")

    async def flush(self, wait_s: float = 10) -> None:
        """Wait until everything queued so far is written (for monitors and tests)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), wait_s)

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
        items, self._pending = self._pending, []
        items.extend(self._drain(self._queue.qsize()))
        for batch in self._chunks(items):
            await self._write(batch, final=True)
        self._idle.set()

    # -- the writer side -----------------------------------------------------------------------------

    def _chunks(self, items: list[T]) -> list[list[T]]:
        out: list[list[T]] = []
        rows = 0
        for item in items:
            if not out or rows >= self.batch_size:
                out.append([])
                rows = 0
            out[-1].append(item)
            rows += self._rows_of(item)
        return out

    def _drain(self, limit: int) -> list[T]:
        items: list[T] = []
        while len(items) < limit:
            try:
                items.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                break
        return items

    async def _run(self) -> None:
        while True:
            items = await self._collect()
            # Shielded: a stop() during the insert lets it finish, so nothing is lost or written twice.
            self._inflight = asyncio.ensure_future(self._write(items))
            await asyncio.shield(self._inflight)
            self._inflight = None
            if self._queue.empty():
                self._idle.set()

    async def _collect(self) -> list[T]:
        loop = asyncio.get_running_loop()
        items = self._pending
        self._pending = []
        try:
            if not items:
                items.append(await self._queue.get())
            deadline = loop.time() + self.flush_interval_s
            rows = sum(self._rows_of(i) for i in items)
            while rows < self.batch_size:
                more = self._drain(self.batch_size - rows)
                items.extend(more)
                rows += sum(self._rows_of(i) for i in more)
                remaining = deadline - loop.time()
                if rows >= self.batch_size or remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
                items.append(item)
                rows += self._rows_of(item)
        except asyncio.CancelledError:
            self._pending = items  # taken from the queue but not written: stop() writes them
            raise
        return items

    def _insert(self, items: list[T]) -> None:
        with self.engine.begin() as conn:
            self._insert_rows(conn, items)

    def _failed(self, exc: SQLAlchemyError) -> None:
        self.stats.failed_batches += 1
        self.stats.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"

    def _written(self, items: list[T]) -> None:
        rows = sum(self._rows_of(i) for i in items)
        self.stats.written += rows
        self._outstanding -= rows

    async def _write(self, items: list[T], *, final: bool = False) -> None:
        delay = 0.2
        while True:
            try:
                await asyncio.to_thread(self._insert, items)
            except (DataError, IntegrityError) as exc:
                self._failed(exc)
                await self._write_each(items)
                return
            except SQLAlchemyError as exc:
                self._failed(exc)
                log.warning(
                    "%s write failed (%d items), retrying: %s", self.name, len(items), self.stats.last_error
                )
                if final:
                    rows = sum(self._rows_of(i) for i in items)
                    self.stats.dropped += rows
                    self._outstanding -= rows
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self.stats.last_error = None
            self._written(items)
            return

    async def _write_each(self, items: list[T]) -> None:
        """The database refused the batch's data: retrying cannot help, so write what it accepts."""
        written: list[T] = []
        for item in items:
            try:
                await asyncio.to_thread(self._insert, [item])
            except SQLAlchemyError as exc:
                self._failed(exc)
                self.stats.dropped += self._rows_of(item)
                self._outstanding -= self._rows_of(item)
                log.error(
                    "%s: an item refused by the database was dropped: %s", self.name, self.stats.last_error
                )
                continue
            written.append(item)
        self._written(written)
