"""The shared batch writer: never blocks, counts drops, reports rows in flight, flushes on stop, and
writes item by item what the database refuses as data (one bad row cannot wedge the log)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from sqlalchemy import Column, Connection, Integer, MetaData, String, Table, create_engine, insert, select

from gateway.db.batchwriter import BatchWriter

META = MetaData()
ITEMS = Table(
    "items", META, Column("id", Integer, primary_key=True), Column("name", String(10), nullable=False)
)


def engine_at(tmp_path: Path):  # type: ignore[no-untyped-def]
    engine = create_engine(f"sqlite:///{tmp_path / 'w.db'}")
    META.create_all(engine)
    return engine


async def test_backlog_drops_stop_and_row_by_row(tmp_path: Path) -> None:
    engine = engine_at(tmp_path)
    gate = threading.Event()

    def slow_insert(conn: Connection, rows: list[dict[str, object]]) -> None:
        gate.wait(5)  # the database is slow: the first batch stays in flight
        conn.execute(insert(ITEMS), rows)

    writer: BatchWriter[dict[str, object]] = BatchWriter(
        engine, slow_insert, name="test", queue_size=3, batch_size=2, flush_interval_s=0.01
    )
    writer.start()
    accepted = [writer.submit({"id": i, "name": f"n{i}"}) for i in range(3)]
    await asyncio.sleep(0.1)  # the writer takes a batch of 2 and waits on the database
    accepted += [writer.submit({"id": i, "name": f"n{i}"}) for i in range(3, 8)]
    # 2 taken as a batch (blocked on the database), 1 left queued, room for 2 more: 5 accepted, 3 dropped
    assert accepted.count(True) == 5 and writer.stats.dropped == 3
    assert writer.backlog == 5  # in flight or queued: none written yet
    gate.set()
    await writer.stop()  # finishes the batch in flight, flushes the queue
    assert writer.backlog == 0 and writer.stats.written == 5
    with engine.connect() as conn:
        assert len(conn.execute(select(ITEMS)).all()) == 5

    # a batch with one row the database refuses (NOT NULL): the others are still written
    writer = BatchWriter(
        engine,
        lambda conn, rows: conn.execute(insert(ITEMS), rows),
        name="test",
        queue_size=10,
        batch_size=10,
        flush_interval_s=0.05,
    )
    writer.start()
    for item in ({"id": 100, "name": "ok"}, {"id": 101, "name": None}, {"id": 102, "name": "ok"}):
        writer.submit(item)
    await writer.flush(5)
    await writer.stop()
    assert writer.stats.written == 2 and writer.stats.dropped == 1 and writer.backlog == 0
    with engine.connect() as conn:
        assert {r.id for r in conn.execute(select(ITEMS).where(ITEMS.c.id >= 100))} == {100, 102}
