"""The write-ahead spool and the batch writer's use of it, on real SQLite files: a failing database sends
batches to the spool (nothing lost, nothing in memory), a working one gets them back in order and exactly
once (insert-or-ignore on the primary key, also when a row is already there), a full spool drops and
counts, a line cut short by a crash is ignored, and a spool left by a stopped writer is replayed by the
next one. The database "fails" by being unreachable: its file's directory is replaced by a plain file."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Column, Connection, Integer, MetaData, String, Table, create_engine, insert, select

from gateway.db.batchwriter import BatchWriter, SpoolCodec
from gateway.db.spool import Spool, insert_ignore

META = MetaData()
ITEMS = Table("items", META, Column("id", Integer, primary_key=True), Column("name", String(10)))
CODEC = SpoolCodec[dict[str, Any]](
    encode=orjson.dumps,
    decode=orjson.loads,
    insert_ignore=lambda conn, rows: insert_ignore(conn, ITEMS, rows),
)


def insert_rows(conn: Connection, rows: list[dict[str, Any]]) -> None:
    conn.execute(insert(ITEMS), rows)


def writer_at(db_dir: Path, spool: Path, **kw: Any) -> BatchWriter[dict[str, Any]]:
    engine = create_engine(f"sqlite:///{db_dir / 'w.db'}")
    options: dict[str, Any] = {"queue_size": 1000, "batch_size": 50, "flush_interval_s": 0.01}
    options.update(kw)
    return BatchWriter(engine, insert_rows, name="t", spool_dir=spool, codec=CODEC, **options)


def ids_in(db_dir: Path) -> list[int]:
    engine = create_engine(f"sqlite:///{db_dir / 'w.db'}")
    with engine.connect() as conn:
        ids = [r.id for r in conn.execute(select(ITEMS.c.id).order_by(ITEMS.c.id))]
    engine.dispose()
    return ids


async def wait(check: Any, timeout: float = 10) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline
        await asyncio.sleep(0.02)


async def test_outage_spools_then_replays_in_order_exactly_once(tmp_path: Path) -> None:
    db_dir = tmp_path / "db"
    db_dir.mkdir()
    META.create_all(create_engine(f"sqlite:///{db_dir / 'w.db'}"))
    writer = writer_at(db_dir, tmp_path / "spool")
    writer.start()
    for i in range(10):
        writer.submit({"id": i, "name": "a"})
    await writer.flush(5)
    assert ids_in(db_dir) == list(range(10)) and not writer.spool

    moved = tmp_path / "db-away"
    db_dir.rename(moved)  # the database is gone: connections fail
    db_dir.write_text("not a directory")
    for i in range(10, 200):
        writer.submit({"id": i, "name": "b"})
    await wait(lambda: writer.stats.spooled == 190)
    assert writer.backlog == 0 and not writer.database_up  # nothing waits in memory
    assert writer.spool is not None and writer.spool.rows == 190

    db_dir.unlink()
    moved.rename(db_dir)
    with create_engine(f"sqlite:///{db_dir / 'w.db'}").begin() as conn:
        conn.execute(insert(ITEMS), [{"id": 150, "name": "already"}])  # a row that got in before: not twice
    writer.submit({"id": 200, "name": "c"})  # queued behind the spool
    await wait(lambda: not writer.spool and writer.backlog == 0)
    await writer.stop()
    assert ids_in(db_dir) == list(range(201))
    assert writer.database_up and writer.stats.dropped == 0
    assert not list((tmp_path / "spool").glob("*.jsonl"))


async def test_full_spool_drops_and_counts_and_a_torn_line_is_ignored(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", max_bytes=100)
    assert spool.append([b'{"id":1}', b'{"id":2}'])
    assert not spool.append([b"x" * 200])  # over the bound: nothing written
    spool.close()
    segment = spool.segments[0]
    with open(segment.path, "ab") as f:
        f.write(b'{"id":3')  # the machine crashed in the middle of a write
    again = Spool(tmp_path / "s", max_bytes=100)
    found = again.oldest()
    assert found is not None and found[1] == [b'{"id":1}', b'{"id":2}']


async def test_stop_with_the_database_down_spools_and_the_next_writer_replays(tmp_path: Path) -> None:
    db_dir = tmp_path / "db"
    db_dir.mkdir()
    META.create_all(create_engine(f"sqlite:///{db_dir / 'w.db'}"))
    shutil.move(db_dir, tmp_path / "away")
    db_dir.write_text("")
    writer = writer_at(db_dir, tmp_path / "spool", flush_interval_s=5, stop_deadline_s=1)
    writer.start()
    for i in range(30):
        writer.submit({"id": i, "name": "z"})
    loop = asyncio.get_running_loop()
    started = loop.time()
    await writer.stop()  # the batch is still being collected: stop writes or spools it, within the deadline
    assert loop.time() - started < 3
    assert writer.spool is not None and writer.spool.rows == 30 and writer.stats.dropped == 0

    db_dir.unlink()
    shutil.move(tmp_path / "away", db_dir)
    after = writer_at(db_dir, tmp_path / "spool")
    after.start()
    await wait(lambda: not after.spool)
    await after.stop()
    assert ids_in(db_dir) == list(range(30))


def test_segments_rotate_by_size(tmp_path: Path, monkeypatch: Any) -> None:
    import gateway.db.spool as spool_module

    monkeypatch.setattr(spool_module, "SEGMENT_BYTES", 64)
    spool = Spool(tmp_path / "s", max_bytes=10_000)
    for i in range(10):
        assert spool.append([b'{"id":%d,"pad":"xxxxxxxxxxxxxxxxxxxx"}' % i])
    assert len(spool.segments) >= 4 and spool.rows == 10
    seen = []
    while (found := spool.oldest()) is not None:
        segment, lines = found
        seen += [orjson.loads(line)["id"] for line in lines]
        spool.done(segment)
    assert seen == list(range(10)) and spool.size == 0


async def test_ml_prediction_rows_spool_and_replay_once(tmp_path: Path) -> None:
    """The ML log uses the same spool: prediction rows (JSON inputs, datetimes) written while the
    database is away arrive once it is back, with their values intact and no row twice."""
    from datetime import UTC, datetime

    from gateway.db.engine import make_engine, migrate
    from gateway.ml.tables import MLPrediction
    from gateway.ml.writer import Batch, MLWriter

    db_dir = tmp_path / "db"
    engine = make_engine(f"sqlite:///{db_dir / 'ml.db'}")
    migrate(engine)
    engine.dispose()
    shutil.move(db_dir, tmp_path / "away")
    db_dir.write_text("")
    writer = MLWriter(
        create_engine(f"sqlite:///{db_dir / 'ml.db'}"),
        queue_size=100,
        batch_size=50,
        flush_interval_s=0.01,
        spool_dir=tmp_path / "spool",
    )
    writer.start()
    ts = datetime(2026, 12, 5, 4, 0, tzinfo=UTC)
    rows = [
        {"id": f"req_1:{i}", "request_id": "req_1", "ts": ts, "name": "loan", "version": 1, "content_hash": "h",
         "inputs": {"income": 1000 + i, "job": "clerk"}, "label": "yes", "score": 0.5, "value": None, "flags": []}
        for i in range(3)
    ]  # fmt: skip
    writer.submit(Batch(MLPrediction, rows))
    await wait(lambda: writer.stats.spooled == 3)
    db_dir.unlink()
    shutil.move(tmp_path / "away", db_dir)
    await wait(lambda: not writer.spool)
    await writer.stop()
    check = create_engine(f"sqlite:///{db_dir / 'ml.db'}")
    with check.connect() as conn:
        got = (
            conn.execute(select(MLPrediction.__table__).order_by(MLPrediction.__table__.c.id))
            .mappings()
            .all()
        )
    assert [r["id"] for r in got] == ["req_1:0", "req_1:1", "req_1:2"]
    assert got[1]["inputs"] == {"income": 1001, "job": "clerk"} and got[0]["label"] == "yes"
