"""Writes off the request path: a bounded queue, batched inserts in a worker thread, counted drops, and a
write-ahead spool on disk while the database fails.

Used by the request log and by the ML prediction log. A request puts an item on the queue and moves on (no
DB work, no wait). A task takes items in batches (up to `batch_size` rows, or what arrived within
`flush_interval_s`) and inserts each batch in one transaction in the writer's thread, so rows are written
whole or not at all. A full queue drops the item and counts it; a batch the database refuses as data (too
long, constraint) is written item by item so one bad row cannot wedge the log.

When the database fails (unreachable, read-only, locked), the batch and every later one go to the spool
(gateway/db/spool.py: append-only, one fsync per batch, bounded by `spool_max_bytes`) instead of waiting
in memory, and one line is logged per change of state (down, still down every 30 s, back). Every
`probe` interval the writer tries to replay the spool, oldest first and in order, with insert-or-ignore
on the primary key (exactly once); while the spool is not empty new batches are appended to it, so rows
reach the database in the order they were answered. The normal path never touches the spool.

Shutdown has a deadline (`stop_deadline_s`): the batch in flight and what is queued are written if the
database takes them in time, and spooled otherwise; the process then exits. A spool left by a stopped or
killed process is replayed by the next one started on the same data dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DataError, IntegrityError

from gateway.db.outage import Outage, describe
from gateway.db.spool import Spool

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger("opsgate.db.writer")
PROBE_MIN_S = 0.5  # first retry of a failing database; doubles up to PROBE_MAX_S
PROBE_MAX_S = 2.0
REPLAY_CHUNKS = 4  # batches replayed per turn of the loop, between two looks at the queue


@dataclass
class WriterStats:
    written: int = 0
    dropped: int = 0
    failed_batches: int = 0
    spooled: int = 0  # rows appended to the spool (all time)
    replayed: int = 0  # rows replayed from the spool into the database (all time)
    last_error: str | None = None


@dataclass
class SpoolCodec(Generic[T]):
    """How items go to the spool and come back, and how replayed items are inserted (insert-or-ignore)."""

    encode: Callable[[T], bytes]
    decode: Callable[[bytes], T]
    insert_ignore: Callable[[Connection, list[T]], None]


class _Thread:
    """One daemon thread for a writer's database work: calls run in order, and a call stuck on a dead
    database cannot hold the process at exit (the default executor's threads are joined)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], asyncio.Future[Any]]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def run(self, fn: Callable[[], R]) -> R:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._calls.put((fn, future))
        return await future

    def _loop(self) -> None:
        while True:
            fn, future = self._calls.get()
            loop = future.get_loop()
            try:
                result = fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
                _resolve(loop, future, None, exc)
            else:
                _resolve(loop, future, result, None)


def _resolve(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], result: Any, exc: Any) -> None:
    def settle() -> None:
        if future.done():
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        loop.call_soon_threadsafe(settle)


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
        spool_dir: Path | None = None,
        spool_max_bytes: int = 1 << 30,
        codec: SpoolCodec[T] | None = None,
        stop_deadline_s: float = 5.0,
    ) -> None:
        self.engine = engine
        self.name = name
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.stop_deadline_s = stop_deadline_s
        self.stats = WriterStats()
        self.outage = Outage(f"{name}: database", log)
        self._insert_rows = insert
        self._rows_of = rows_of
        self._codec = codec
        self.spool: Spool | None = None
        if spool_dir is not None and codec is not None:
            self.spool = Spool(spool_dir, max_bytes=spool_max_bytes)
        self._thread = _Thread(f"opsgate-{name}-db")
        self._spool_thread = _Thread(f"opsgate-{name}-spool")  # not behind a database call that hangs
        self._queue: asyncio.Queue[T] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task[None] | None = None
        self._inflight: asyncio.Future[None] | None = None
        self._inflight_items: list[T] = []
        self._pending: list[T] = []
        self._idle = asyncio.Event()
        self._idle.set()
        self._outstanding = 0
        self._next_probe = 0.0
        self._probe_s = PROBE_MIN_S
        self._spool_full = Outage(f"{name}: spool", log)

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
        """Rows accepted but not yet written (queued, or in a batch being written; not the spool)."""
        return self._outstanding

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def database_up(self) -> bool:
        """False from a failed write until a write succeeds again."""
        return self.outage.up

    def spool_state(self) -> dict[str, Any]:
        spool = self.spool
        if spool is None:
            return {"enabled": False}
        return {
            "enabled": True,
            "path": str(spool.directory),
            "bytes": spool.size,
            "rows": spool.rows,
            "age_s": round(spool.age_s(), 3),
            "max_bytes": spool.max_bytes,
            "spooled": self.stats.spooled,
            "replayed": self.stats.replayed,
        }

    # -- life cycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        if self.spool:
            log.warning(
                "%s: %d rows left in the spool %s by an earlier run; replaying them",
                self.name,
                self.spool.rows,
                self.spool.directory,
            )
            self._idle.clear()
        self._task = asyncio.create_task(self._run(), name=f"opsgate-{self.name}")

    async def flush(self, wait_s: float = 10) -> None:
        """Wait until everything queued so far is written (for monitors and tests); at once while the
        database is down (the rows wait in the spool: nobody should wait on them)."""
        if not self.database_up:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), wait_s)

    async def stop(self) -> None:
        """Write what is queued or in flight if the database takes it before the deadline; spool the rest."""
        deadline = time.monotonic() + self.stop_deadline_s
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        items: list[T] = []
        if self._inflight is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._inflight), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                items.extend(self._inflight_items)  # maybe written after all: the replay ignores doubles
                log.warning("%s: the database did not finish a write before the shutdown deadline", self.name)
            except asyncio.CancelledError:
                pass
            self._inflight = None
            self._inflight_items = []
        items += self._pending
        self._pending = []
        items.extend(self._drain(self._queue.qsize()))
        for batch in self._chunks(items):
            await self._write(batch, deadline=deadline)
        if self.spool:
            self.spool.close()
            log.warning(
                "%s: %d rows left in the spool %s for the next start",
                self.name,
                self.spool.rows,
                self.spool.directory,
            )
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
        loop = asyncio.get_running_loop()
        while True:
            first_wait: float | None = None
            if self.spool:  # rows wait on disk: come back for them at the next probe
                first_wait = max(0.0, self._next_probe - loop.time())
            items = await self._collect(first_wait)
            if items:
                # Shielded: a stop() during the insert lets it finish, so nothing is lost or written twice.
                self._inflight_items = items
                self._inflight = asyncio.ensure_future(self._write(items))
                await asyncio.shield(self._inflight)
                self._inflight, self._inflight_items = None, []
            if self.spool and loop.time() >= self._next_probe:
                self._inflight = asyncio.ensure_future(self._replay())
                await asyncio.shield(self._inflight)
                self._inflight = None
            if self._queue.empty() and not self.spool:
                self._idle.set()

    async def _collect(self, first_wait: float | None) -> list[T]:
        """A batch: up to `batch_size` rows or what arrives within `flush_interval_s` of the first item.
        `first_wait` bounds the wait for the first item (None: wait for one)."""
        loop = asyncio.get_running_loop()
        items = self._pending
        self._pending = []
        try:
            if not items and first_wait is not None and first_wait <= 0:
                items = self._drain(1)
                if not items:
                    return items
            elif not items:
                try:
                    items.append(await asyncio.wait_for(self._queue.get(), first_wait))
                except TimeoutError:
                    return items
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

    def _failed(self, exc: BaseException) -> None:
        self.stats.failed_batches += 1
        self.stats.last_error = describe(exc)

    def _settled(self, items: list[T], *, written: bool) -> None:
        """The items left memory: written to the database, spooled, or dropped."""
        rows = sum(self._rows_of(i) for i in items)
        self._outstanding -= rows
        if written:
            self.stats.written += rows

    async def _write(self, items: list[T], *, deadline: float | None = None) -> None:
        """Insert a batch; on a database failure spool it (or, without a spool, retry until `deadline`)."""
        if self.spool:  # earlier rows wait on disk: these go after them
            await self._to_spool(items)
            return
        while True:
            try:
                if deadline is None:
                    await self._thread.run(lambda: self._insert(items))
                else:
                    left = max(0.0, deadline - time.monotonic())
                    await asyncio.wait_for(self._thread.run(lambda: self._insert(items)), left)
            except (DataError, IntegrityError) as exc:
                self._failed(exc)
                self.outage.recovered()
                await self._write_each(items)
                return
            except Exception as exc:  # noqa: BLE001 - the database is away (or stuck): rows must not be lost
                self._failed(exc)
                self._down(exc)
                if self._codec is not None and self.spool is not None:
                    await self._to_spool(items)
                    return
                if deadline is not None and time.monotonic() >= deadline:
                    self._settled(items, written=False)
                    self.stats.dropped += sum(self._rows_of(i) for i in items)
                    return
                await asyncio.sleep(self._probe_s)
                continue
            self.stats.last_error = None
            self.outage.recovered()
            self._probe_s = PROBE_MIN_S
            self._settled(items, written=True)
            return

    def _down(self, exc: BaseException) -> None:
        note = f"spooling rows to {self.spool.directory}" if self.spool is not None else "rows wait in memory"
        self.outage.failed(exc, note)
        self._next_probe = asyncio.get_running_loop().time() + self._probe_s
        self._probe_s = min(self._probe_s * 2, PROBE_MAX_S)

    async def _to_spool(self, items: list[T]) -> None:
        assert self.spool is not None and self._codec is not None
        spool, encode = self.spool, self._codec.encode
        rows = sum(self._rows_of(i) for i in items)
        try:
            ok = await self._spool_thread.run(lambda: spool.append([encode(i) for i in items]))
            problem = f"full ({spool.size} of {spool.max_bytes} bytes)"
        except Exception as exc:  # noqa: BLE001 - disk full, read-only, a value JSON cannot hold: counted
            ok, problem = False, describe(exc)
        if ok:
            self.stats.spooled += rows
            self._spool_full.recovered()
        else:
            self.stats.dropped += rows
            self._spool_full.failed(problem, "rows dropped")
        self._settled(items, written=False)

    async def _replay(self) -> None:
        """Insert up to REPLAY_CHUNKS batches from the oldest segment; on a failure try again later."""
        assert self.spool is not None and self._codec is not None
        spool, codec = self.spool, self._codec
        try:
            found = await self._spool_thread.run(spool.oldest)
        except OSError as exc:
            log.error("%s: cannot read the spool %s: %s", self.name, spool.directory, describe(exc))
            self._next_probe = asyncio.get_running_loop().time() + PROBE_MAX_S
            return
        if found is None:
            return
        segment, lines = found
        for _ in range(REPLAY_CHUNKS):
            chunk, lines = lines[: self.batch_size], lines[self.batch_size :]
            items: list[T] = []
            for line in chunk:
                try:
                    items.append(codec.decode(line))
                except Exception as exc:  # noqa: BLE001 - a line the spool cannot give back is reported, skipped
                    log.error(
                        "%s: a spooled row could not be read and was dropped: %s", self.name, describe(exc)
                    )
                    self.stats.dropped += 1

            def insert(items: list[T] = items) -> None:
                with self.engine.begin() as conn:
                    codec.insert_ignore(conn, items)

            try:
                if items:
                    await self._thread.run(insert)
            except (DataError, IntegrityError) as exc:
                self._failed(exc)
                items = await self._replay_each(items)
            except Exception as exc:  # noqa: BLE001 - still down: try again later
                self._failed(exc)
                self._down(exc)
                return
            self.outage.recovered(f"replaying the spool ({spool.rows} rows)")
            self.stats.last_error = None
            segment.replayed += len(chunk)
            rows = sum(self._rows_of(i) for i in items)
            self.stats.replayed += rows
            self.stats.written += rows
            if not lines:
                await self._spool_thread.run(lambda: spool.done(segment))
                break
        self._probe_s = PROBE_MIN_S
        if not spool:
            log.warning("%s: the spool is replayed (%d rows in all)", self.name, self.stats.replayed)

    async def _replay_each(self, items: list[T]) -> list[T]:
        """A replayed batch the database refuses as data: insert what it accepts, drop (and count) the rest."""
        assert self._codec is not None
        insert_ignore = self._codec.insert_ignore
        accepted: list[T] = []
        for item in items:

            def one(item: T = item) -> None:
                with self.engine.begin() as conn:
                    insert_ignore(conn, [item])

            try:
                await self._thread.run(one)
            except Exception as exc:  # noqa: BLE001 - refused as data: counted, reported
                self._failed(exc)
                self.stats.dropped += self._rows_of(item)
                log.error(
                    "%s: a spooled row refused by the database was dropped: %s", self.name, describe(exc)
                )
                continue
            accepted.append(item)
        return accepted

    async def _write_each(self, items: list[T]) -> None:
        """The database refused the batch's data: retrying cannot help, so write what it accepts."""
        written: list[T] = []
        for item in items:
            try:
                await self._thread.run(lambda item=item: self._insert([item]))  # type: ignore[misc]
            except Exception as exc:  # noqa: BLE001 - refused as data, or gone meanwhile: counted
                self._failed(exc)
                self.stats.dropped += self._rows_of(item)
                self._outstanding -= self._rows_of(item)
                log.error(
                    "%s: an item refused by the database was dropped: %s", self.name, self.stats.last_error
                )
                continue
            written.append(item)
        self._settled(written, written=True)
