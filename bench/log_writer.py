"""Per-row cost of the request log's normal path (database up): submit on the request path, then the
writer's batching and insert, on a temp SQLite file. Prints µs of CPU per row (the whole process: the
event loop and the writer's thread) and rows/s, so the spool's cost to the normal path (none but a check
per batch) can be compared before/after.

    .venv/bin/python bench/log_writer.py --rows 20000 --rounds 3
    PYTHONPATH=/tmp/old-tree .venv/bin/python bench/log_writer.py      # the same on another tree

Bounded: a few seconds per round.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from gateway.db.engine import make_engine, migrate
from gateway.monitoring.requestlog import LogRow, RequestLogWriter


async def one_round(rows: int, spool: bool) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{Path(tmp) / 'b.db'}")
        migrate(engine)
        options = {"queue_size": rows + 1, "batch_size": 500, "flush_interval_s": 0.2}
        if spool and "spool_dir" in inspect.signature(RequestLogWriter).parameters:
            options["spool_dir"] = Path(tmp) / "spool"  # type: ignore[assignment]
        writer = RequestLogWriter(engine, **options)  # type: ignore[arg-type]
        writer.start()
        cpu, wall = time.process_time(), time.perf_counter()
        for i in range(rows):
            row = LogRow(id=f"req_{i:024d}", ts=datetime.now(UTC), route="chat", status=200, latency_ms=1.0)
            row.model, row.key_id, row.principal, row.tokens_in, row.tokens_out = "m", "k", "p", 10, 20
            writer.submit(row)
            if i % 200 == 199:
                await asyncio.sleep(0)  # requests arrive over time: let the writer run
        await writer.flush(60)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        await writer.stop()
        assert writer.stats.written == rows, writer.stats
        engine.dispose()
        return cpu * 1e6 / rows, rows / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-spool", action="store_true", help="without a spool directory")
    args = parser.parse_args()
    results = [asyncio.run(one_round(args.rows, not args.no_spool)) for _ in range(args.rounds)]
    for cpu_us, rate in results:
        print(f"{args.rows} rows: {cpu_us:.1f} µs CPU per row, {rate:,.0f} rows/s")
    best = min(r[0] for r in results)
    print(f"best: {best:.1f} µs CPU per row")


if __name__ == "__main__":
    main()
