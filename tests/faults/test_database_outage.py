"""A database outage costs no request and no log row (issue 13), against real servers: the real gateway
on a throwaway PostgreSQL that the test stops and starts again (never the machine's shared one), and on
SQLite locked by another process.

While the database is away: chat is answered from memory; `/readyz` stays 200 and says `degraded`;
`/metrics` says `opsgate_database_up 0` with the spool's size and age; admin reads answer 503 with
Retry-After and an OpenAI-style error; rows go to the spool; the log says so once, not a traceback per
retry. When it is back every answered request has exactly one row. SIGTERM with the database down exits
within the deadline, spooling what it could not write; the next start on the data dir replays it.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import FAST_GATEWAY_YAML, GatewayProcess, deployment
from tests.fakes.services import ThrowawayPostgres
from tests.fakes.upstream import FakeUpstream
from tests.monitoring.test_requestlog import metric

MESSAGES = [{"role": "user", "content": "outage"}]


@pytest.fixture(scope="module")
def project(project_factory: ProjectFactory, fake_upstream: FakeUpstream) -> Path:
    routers = {"echo": {"deployments": [deployment("e", fake_upstream.url("ok-outage"))]}}
    return project_factory(routers=routers, files={"config/gateway.yaml": FAST_GATEWAY_YAML})


@pytest.fixture(scope="module")
def postgres() -> Iterator[ThrowawayPostgres]:
    pg = ThrowawayPostgres().init()
    yield pg
    pg.destroy()


def chat_ids(gw: GatewayProcess, n: int) -> list[str]:
    """n chat requests with the official client; every one must be answered. Returns the request ids."""
    ids = []
    client = gw.client()
    for _ in range(n):
        raw = client.chat.completions.with_raw_response.create(model="echo", messages=MESSAGES)  # type: ignore[arg-type]
        assert raw.parse().choices[0].message.content
        ids.append(raw.headers["x-opsgate-request-id"])
    return ids


def readyz(gw: GatewayProcess) -> tuple[int, dict[str, Any]]:
    with gw.http() as http:
        r = http.get("/readyz")
    return r.status_code, r.json()


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.1)


def row_counts(gw: GatewayProcess, ids: list[str]) -> dict[str, int]:
    return {i: gw.count_rows(i) for i in ids}


def test_postgres_outage_is_survived_and_every_row_written_once(
    start_gateway: GatewayFactory, project: Path, postgres: ThrowawayPostgres
) -> None:
    gw = start_gateway(project, database_url=postgres.url)
    before = chat_ids(gw, 5)
    postgres.stop()
    try:
        during = chat_ids(gw, 40)  # answered from memory (keys, aliases); rows go to the spool
        status, body = wait_for(
            lambda: (r := readyz(gw))[1]["checks"]["request_log"]["spool"]["rows"] > 0 and r,
            15,
            "rows spooled",
        )
        assert status == 200 and body["status"] == "degraded" and body["degraded"] == ["database"], body
        spool = body["checks"]["request_log"]["spool"]
        assert spool["enabled"] and spool["bytes"] > 0 and spool["age_s"] >= 0
        text = gw.metrics()
        assert metric(text, "opsgate_database_up") == 0
        assert metric(text, "opsgate_request_log_spool_rows") > 0
        assert metric(text, "opsgate_request_log_spool_bytes") > 0
        assert metric(text, "opsgate_request_log_dropped") == 0
        with gw.http() as http:  # an admin read: 503 + Retry-After, OpenAI-style, never a 500
            r = http.get("/admin/artifacts", headers=gw.auth())
        assert r.status_code == 503, r.text
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["code"] == "database_unavailable"
        assert r.json()["error"]["type"] == "server_error"
        time.sleep(2)  # a couple of retries of the writer and polls of the catalog
    finally:
        postgres.start()
    ids = before + during
    counts = wait_for(
        lambda: (c := row_counts(gw, ids)) and all(v >= 1 for v in c.values()) and c, 30, "every row written"
    )
    assert set(counts.values()) == {1}, counts  # exactly once
    status, body = wait_for(lambda: (r := readyz(gw))[1]["status"] == "ready" and r, 15, "ready again")
    assert body["checks"]["request_log"]["spool"]["rows"] == 0
    assert metric(gw.metrics(), "opsgate_database_up") == 1
    out = gw.output()
    assert "Traceback" not in out, out[-3000:]
    assert out.count("request-log: database unavailable") == 1, out[-3000:]
    assert "request-log: database back after" in out
    assert out.count("catalog refresh: database unavailable") <= 1
    assert out.count("admin API: database unavailable") == 1 and "admin API: database back after" in out


def test_sigterm_with_the_database_down_exits_and_the_next_start_replays(
    start_gateway: GatewayFactory, project: Path, postgres: ThrowawayPostgres
) -> None:
    gw = start_gateway(project, database_url=postgres.url)
    postgres.stop()
    try:
        ids = chat_ids(gw, 30)
        assert gw.process is not None
        started = time.monotonic()
        code = gw.stop(timeout=60)
        took = time.monotonic() - started
        assert took < 12, f"SIGTERM with the database down took {took:.1f} s"  # grace 10 s max, deadline 5 s
        assert code in (0, -15), gw.output()[-2000:]  # uvicorn ends by re-raising the SIGTERM it handled
        spooled = list((gw.data_dir / "spool" / "request-log").glob("*.jsonl"))
        assert spooled and sum(p.read_bytes().count(b"\n") for p in spooled) == len(ids)
    finally:
        postgres.start()
    # a new process on the same data dir replays the spool the stopped one left
    with GatewayProcess(
        project, data_dir=gw.data_dir, database_url=postgres.url, admin_key=gw.admin_key
    ) as again:
        again.start()
        counts = wait_for(
            lambda: (c := row_counts(again, ids)) and all(v >= 1 for v in c.values()) and c,
            30,
            "spool replayed",
        )
        assert set(counts.values()) == {1}
        wait_for(
            lambda: not list((gw.data_dir / "spool" / "request-log").glob("*.jsonl")), 10, "spool removed"
        )


def test_sqlite_locked_by_another_process(start_gateway: GatewayFactory, project: Path) -> None:
    """SQLite that refuses writes (another process holds its write lock): served, spooled, replayed."""
    gw = start_gateway(project)
    db_file = gw.data_dir / "opsgate.db"
    locked = threading.Event()
    release = threading.Event()

    def hold_lock() -> None:
        conn = sqlite3.connect(db_file, isolation_level=None, timeout=30)
        conn.execute("BEGIN IMMEDIATE")  # the write lock: every other writer waits, then is refused
        locked.set()
        release.wait(60)
        conn.execute("ROLLBACK")
        conn.close()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert locked.wait(30)
        ids = chat_ids(gw, 20)  # answered at once: the log is written off the request path
        status, body = wait_for(
            lambda: (r := readyz(gw))[1]["checks"]["request_log"]["spool"]["rows"] > 0 and r,
            40,
            "rows spooled while SQLite is locked",
        )
        assert status == 200 and "database" in body["degraded"], body
        ids += chat_ids(gw, 10)
    finally:
        release.set()
        holder.join()
    counts = wait_for(
        lambda: (c := row_counts(gw, ids)) and all(v >= 1 for v in c.values()) and c, 40, "every row written"
    )
    assert set(counts.values()) == {1}
    wait_for(lambda: readyz(gw)[1]["status"] == "ready", 20, "ready again")
