"""The request log on SQLite and PostgreSQL: one complete row per request, filtered queries, a writer that
never blocks requests (drops counted when its queue is full), and a flush on shutdown."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import FAST_GATEWAY_YAML, GatewayProcess, deployment
from tests.fakes.upstream import FakeUpstream, count_tokens, prompt_tokens

MESSAGES = [{"role": "user", "content": "log me please"}]
ANSWER = "echo: log me please"


def routers(up: FakeUpstream) -> dict[str, Any]:
    return {
        "priced": {"deployments": [deployment("mini", up.url("ok-log"), model="openai/gpt-4o-mini")]},
        "broken": {"deployments": [deployment("bad", up.url("500-log"))]},
    }


@pytest.fixture(scope="module")
def project(project_factory: ProjectFactory, fake_upstream: FakeUpstream) -> Path:
    return project_factory(routers=routers(fake_upstream), files={"config/gateway.yaml": FAST_GATEWAY_YAML})


@pytest.fixture(scope="module")
def gw(gateway_factory: GatewayFactory, project: Path, db_url: str) -> Iterator[GatewayProcess]:
    with gateway_factory(project, database_url=db_url) as gateway:
        yield gateway


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def chat(gw: GatewayProcess, model: str = "priced", **kw: Any) -> tuple[int, str, Any]:
    with gw.http() as http:
        r = http.post(
            "/v1/chat/completions", json={"model": model, "messages": MESSAGES, **kw}, headers=gw.auth()
        )
    return r.status_code, r.headers["x-opsgate-request-id"], r


# -- rows ------------------------------------------------------------------------------------------------------


def test_a_row_with_lineage_usage_cost_and_timings(gw: GatewayProcess) -> None:
    import litellm

    before = datetime.now(UTC)
    status, request_id, r = chat(gw)
    assert status == 200
    row = gw.log_row(request_id)
    assert gw.count_rows(request_id) == 1
    assert row["id"] == request_id
    assert before - timedelta(seconds=1) <= as_utc(row["ts"]) <= datetime.now(UTC)
    assert row["key_id"].startswith("key_")
    assert row["principal"] == "bootstrap-admin"
    assert row["route"] == "/v1/chat/completions"
    assert row["model"] == "priced"
    assert row["artifacts"] == [r.headers["x-opsgate-versions"]]
    assert row["artifacts"][0].startswith("router:priced@1#")
    assert row["upstream_model"] == "openai/gpt-4o-mini"
    assert row["deployment"] == "mini"
    assert (row["status"], row["error_type"], row["error_message"]) == (200, None, None)
    assert 0 < row["upstream_ms"] <= row["latency_ms"]
    assert row["ttft_ms"] is None
    assert row["stream"] is False
    tokens_in, tokens_out = prompt_tokens(MESSAGES), count_tokens(ANSWER)
    assert (row["tokens_in"], row["tokens_out"]) == (tokens_in, tokens_out)
    prompt_cost, completion_cost = litellm.cost_per_token(
        model="gpt-4o-mini", prompt_tokens=tokens_in, completion_tokens=tokens_out
    )
    assert row["cost_usd"] == pytest.approx(prompt_cost + completion_cost, rel=1e-9)
    assert [(a["deployment"], a["ok"]) for a in row["attempts"]] == [("mini", True)]
    assert row["attempts"][0]["ms"] > 0


def test_a_stream_row_has_time_to_first_token(gw: GatewayProcess) -> None:
    status, request_id, _ = chat(gw, stream=True)
    assert status == 200
    row = gw.log_row(request_id)
    assert row["stream"] is True
    assert row["ttft_ms"] is not None
    assert 0 < row["ttft_ms"] <= row["upstream_ms"] <= row["latency_ms"]
    assert (row["tokens_in"], row["tokens_out"]) == (prompt_tokens(MESSAGES), count_tokens(ANSWER))
    assert row["cost_usd"] > 0


def test_a_failed_request_row(gw: GatewayProcess) -> None:
    status, request_id, _ = chat(gw, "broken")
    assert status == 502
    row = gw.log_row(request_id)
    assert (row["status"], row["error_type"]) == (502, "upstream_error")
    assert "HTTP 500" in row["error_message"]
    assert row["deployment"] == "bad"
    assert [(a["deployment"], a["ok"], a["status"]) for a in row["attempts"]] == [("bad", False, 500)]
    assert row["tokens_out"] is None


def test_a_long_model_name_does_not_poison_the_log(gw: GatewayProcess) -> None:
    bad_status, bad_id, _ = chat(gw, "m" * 500)
    assert bad_status in (400, 404)
    status, good_id, r = chat(gw)
    assert status == 200, r.text
    rows = gw.log_rows([bad_id, good_id])
    assert rows[bad_id]["status"] == bad_status
    assert rows[bad_id]["model"].startswith("mmmm")
    assert rows[good_id]["status"] == 200


# -- the query command ------------------------------------------------------------------------------------------


def test_logs_query_filters(gw: GatewayProcess) -> None:
    ok = [chat(gw)[1] for _ in range(3)]
    failed = [chat(gw, "broken")[1] for _ in range(2)]
    gw.log_rows(ok + failed)

    newest = gw.logs("--limit", "5")  # one JSON object a line, newest first
    assert [r["id"] for r in newest] == failed[::-1] + ok[::-1]

    recent_errors = gw.logs("--since", "10m", "--status", "5xx")
    assert {r["id"] for r in recent_errors} >= set(failed)
    assert all(500 <= r["status"] < 600 for r in recent_errors)
    assert not {r["id"] for r in recent_errors} & set(ok)

    # an ISO time with an offset means that instant, whatever the database stores
    a_minute_ago = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=60)
    plus_two = (a_minute_ago + timedelta(hours=2)).replace(tzinfo=None).isoformat() + "+02:00"
    successes = gw.logs("--since", plus_two, "--status", "200")
    assert {r["id"] for r in successes} >= set(ok)
    assert all(r["status"] == 200 for r in successes)
    in_two_minutes = (a_minute_ago + timedelta(minutes=3)).isoformat()
    assert gw.logs("--since", in_two_minutes) == []

    bad = gw.cli("logs", "query", "--status", "teapot", check=False)
    assert bad.returncode == 2
    assert "status" in bad.stderr


# -- the writer never blocks requests ----------------------------------------------------------------------------


@contextlib.contextmanager
def request_log_locked(db_url: str) -> Iterator[None]:
    """Hold a lock that stops every write to the request log (the gateway's writer waits on it)."""
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None, timeout=30)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    with psycopg.connect(db_url) as conn:
        conn.execute("LOCK TABLE request_log IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            conn.rollback()


def test_a_full_queue_drops_rows_without_blocking_requests(
    start_gateway: GatewayFactory,
    project_factory: ProjectFactory,
    fake_upstream: FakeUpstream,
    db_url: str,
    gw: GatewayProcess,
) -> None:
    config = "request_log:\n  queue_size: 1\n  batch_size: 1\n  flush_interval_s: 0.01\n"
    project = project_factory(routers=routers(fake_upstream), files={"config/gateway.yaml": config})
    gw = start_gateway(project, database_url=db_url, admin_key=gw.admin_key)  # shares the module's database
    n = 20
    with request_log_locked(db_url):
        ids, slowest = [], 0.0
        for _ in range(n):
            started = time.monotonic()
            status, request_id, _ = chat(gw)
            slowest = max(slowest, time.monotonic() - started)
            assert status == 200
            ids.append(request_id)
        assert slowest < 2.0  # the writer is stuck on the lock; requests are not
        metrics = gw.metrics()
        dropped = metric(metrics, "opsgate_request_log_dropped")
        assert dropped >= n - 3
        assert metric(metrics, "opsgate_request_log_written") == 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        metrics = gw.metrics()
        if metric(metrics, "opsgate_request_log_written") + dropped >= n:
            break
        time.sleep(0.1)
    assert (
        metric(metrics, "opsgate_request_log_written") + metric(metrics, "opsgate_request_log_dropped") == n
    )
    assert metric(metrics, "opsgate_request_log_dropped") == dropped
    written = [i for i in ids if gw.count_rows(i) == 1]
    assert len(written) == n - dropped
    assert all(gw.count_rows(i) <= 1 for i in ids)


def test_shutdown_flushes_queued_rows(
    start_gateway: GatewayFactory,
    project_factory: ProjectFactory,
    fake_upstream: FakeUpstream,
    db_url: str,
    gw: GatewayProcess,
) -> None:
    config = "request_log:\n  batch_size: 10000\n  flush_interval_s: 60\n"
    project = project_factory(routers=routers(fake_upstream), files={"config/gateway.yaml": config})
    gw = start_gateway(project, database_url=db_url, admin_key=gw.admin_key)
    ids = [chat(gw)[1] for _ in range(10)] + [chat(gw, stream=True)[1] for _ in range(5)]
    time.sleep(0.3)
    assert sum(gw.count_rows(i) for i in ids) == 0  # still queued: the batch waits for its interval
    assert metric(gw.metrics(), "opsgate_request_log_written") == 0
    assert gw.stop() in (0, -15)  # uvicorn re-raises SIGTERM once its graceful shutdown is done
    assert all(gw.count_rows(i) == 1 for i in ids)
    assert "Application shutdown complete" in gw.output()
    assert "Traceback" not in gw.output()
