"""The write-ahead spool of a log writer: an append-only file in the data dir for rows the database could
not take.

While the database fails, each batch the writer collects (up to `flush_interval_s` of rows) is appended to
the spool as one write followed by one fsync, so an outage costs no row: the rows wait on disk, bounded by
`max_bytes` (beyond it, rows are dropped and counted), and outlive a crash or a kill of the process. When
the database answers again the writer replays the spool oldest first, in the order the rows were spooled,
then deletes it; rows are inserted with insert-or-ignore on their primary key (the request id), so a row
replayed twice (a crash in the middle of a replay, or a batch the database committed although the call
failed) is written exactly once.

Layout: `<data dir>/spool/<writer>/<seq>-<created epoch ms>.jsonl`, one JSON document per line (one item).
A new segment starts when a replay begins, so the file being replayed is never appended to, and when the
open one passes SEGMENT_BYTES, so a replay reads a few MB at a time however long the outage. A last line
without its newline (the machine crashed in the middle of a write) is ignored when read.

Blocking: call from the writer's thread, one call at a time.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, DateTime, Table, insert
from sqlalchemy.dialects import postgresql, sqlite

SEGMENT_BYTES = 4 * 1024 * 1024


@dataclass
class Segment:
    path: Path
    seq: int
    created: float  # epoch seconds
    size: int
    rows: int
    replayed: int = 0  # lines of it already inserted by a replay that has not finished


class Spool:
    def __init__(self, directory: Path, *, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segments: list[Segment] = []
        self._fd: int | None = None  # the open (last) segment, while it is being appended to
        self.appended_rows = 0
        self.replayed_rows = 0
        if directory.is_dir():
            for path in sorted(directory.glob("*.jsonl")):
                seq, _, created = path.stem.partition("-")
                with contextlib.suppress(ValueError):
                    data = path.read_bytes()
                    self.segments.append(
                        Segment(path, int(seq), int(created) / 1000, len(data), data.count(b"\n"))
                    )

    # -- figures (read from the event loop) -----------------------------------------------------------

    @property
    def size(self) -> int:
        """Bytes on disk."""
        return sum(s.size for s in self.segments)

    @property
    def rows(self) -> int:
        """Lines waiting to be replayed (an item is a line; an ML item may hold several rows)."""
        return sum(s.rows - s.replayed for s in self.segments)

    def age_s(self) -> float:
        """Seconds since the oldest line still waiting was spooled (0 when empty)."""
        return max(0.0, time.time() - self.segments[0].created) if self.segments else 0.0

    def __bool__(self) -> bool:
        return bool(self.segments)

    # -- writing and reading --------------------------------------------------------------------------

    def append(self, lines: list[bytes]) -> bool:
        """Append the lines in one write, then fsync. False (nothing written) when it would exceed
        `max_bytes`; an OSError (disk full, read-only) is raised with nothing counted."""
        data = b"".join(line + b"\n" for line in lines)
        if self.size + len(data) > self.max_bytes:
            return False
        if self._fd is None:
            self._open_segment()
        assert self._fd is not None
        segment = self.segments[-1]
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)
        segment.size += len(data)
        segment.rows += len(lines)
        self.appended_rows += len(lines)
        if segment.size >= SEGMENT_BYTES:
            self.close()
        return True

    def _open_segment(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        seq = self.segments[-1].seq + 1 if self.segments else 1
        created = time.time()
        path = self.directory / f"{seq:010d}-{int(created * 1000)}.jsonl"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self.segments.append(Segment(path, seq, created, 0, 0))
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the new file's name is durable too
        finally:
            os.close(dir_fd)

    def close(self) -> None:
        """Stop appending to the open segment: the next append starts a new one."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def oldest(self) -> tuple[Segment, list[bytes]] | None:
        """The oldest segment and its lines not yet replayed (closing it first if it is the open one)."""
        if not self.segments:
            return None
        segment = self.segments[0]
        if len(self.segments) == 1:
            self.close()
        data = segment.path.read_bytes()
        lines = data.split(b"\n")
        lines.pop()  # after the last newline: empty, or a line cut short by a crash
        return segment, lines[segment.replayed :]

    def done(self, segment: Segment) -> None:
        """Every line of `segment` is in the database: delete it."""
        self.replayed_rows += segment.rows - segment.replayed
        segment.path.unlink(missing_ok=True)
        self.segments.remove(segment)


# -- rows as JSON lines, and the replay's insert-or-ignore ---------------------------------------------


def dump_row(values: dict[str, Any]) -> bytes:
    """One row's column values as one line (datetimes as ISO 8601; numpy values as numbers)."""
    return orjson.dumps(values, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY, default=str)


def load_row(table: Table, line: bytes) -> dict[str, Any]:
    values: dict[str, Any] = orjson.loads(line)
    for column in table.columns:
        value = values.get(column.name)
        if isinstance(value, str) and isinstance(column.type, DateTime):
            values[column.name] = datetime.fromisoformat(value)
    return values


def insert_ignore(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """INSERT that skips rows whose primary key is already there (a row replayed twice is written once)."""
    if not rows:
        return
    name = conn.dialect.name
    if name == "postgresql":
        conn.execute(postgresql.insert(table).on_conflict_do_nothing(), rows)
    elif name == "sqlite":
        conn.execute(sqlite.insert(table).on_conflict_do_nothing(), rows)
    else:
        conn.execute(insert(table).prefix_with("IGNORE"), rows)
