"""kill -9 under load (issue 13): the gateway is killed while clients are being answered, started again on
the same data dir, and every answered request id is looked up in the request log.

What a kill -9 can cost is the rows still in memory: those of requests answered within the last batch
window (`request_log.flush_interval_s`, plus the time the batch takes to insert or to spool). Rows the
database did not take are on disk in the spool (fsync'd per batch), and the next start replays them. So
every answered request whose row is missing must have been answered within that window before the kill;
with the database down at the time of the kill (everything goes through the spool) the same holds.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import GatewayProcess, deployment
from tests.fakes.services import ThrowawayPostgres
from tests.fakes.upstream import FakeUpstream

FLUSH_S = 0.2  # the default batch window
WINDOW_S = 1.0  # the window plus the insert (or spool write) and the load of a shared 2-core machine
CHAT = {"model": "echo", "messages": [{"role": "user", "content": "kill me"}]}
GATEWAY_YAML = f"request_log:\n  flush_interval_s: {FLUSH_S}\ncache:\n  refresh_interval_s: 0.2\n"


@pytest.fixture(scope="module")
def project(project_factory: ProjectFactory, fake_upstream: FakeUpstream) -> Path:
    routers = {"echo": {"deployments": [deployment("e", fake_upstream.url("ok-kill9"))]}}
    return project_factory(routers=routers, files={"config/gateway.yaml": GATEWAY_YAML})


@pytest.fixture(scope="module")
def postgres() -> Iterator[ThrowawayPostgres]:
    pg = ThrowawayPostgres().init()
    yield pg
    pg.destroy()


def load_and_kill(gw: GatewayProcess, *, clients: int, kill_after_s: float) -> tuple[dict[str, float], float]:
    """`clients` threads posting chat until the gateway dies; kill -9 after `kill_after_s`. Returns
    {request id: monotonic time its answer arrived} and the time of the kill."""
    answered: dict[str, float] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=gw.root_url, trust_env=False, timeout=5) as http:
            while not stop.is_set():
                try:
                    r = http.post("/v1/chat/completions", json=CHAT, headers=gw.auth())
                except httpx.HTTPError:
                    continue  # the gateway is gone
                if r.status_code == 200:
                    with lock:
                        answered[r.headers["x-opsgate-request-id"]] = time.monotonic()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    time.sleep(kill_after_s)
    assert gw.process is not None
    os.kill(gw.process.pid, signal.SIGKILL)
    killed = time.monotonic()
    gw.process.wait()
    stop.set()
    for t in threads:
        t.join()
    return answered, killed


def restart_and_check(
    gw: GatewayProcess, project: Path, answered: dict[str, float], killed: float, db: str | None
) -> int:
    with GatewayProcess(project, data_dir=gw.data_dir, database_url=db, admin_key=gw.admin_key) as again:
        again.start()
        deadline = time.monotonic() + 30
        while True:
            counts = {i: again.count_rows(i) for i in answered}
            missing = [i for i, n in counts.items() if n == 0]
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert max(counts.values()) == 1  # never twice
    late = {i: round(killed - answered[i], 3) for i in missing if killed - answered[i] > WINDOW_S}
    print(
        f"kill -9: {len(answered)} answered, {len(missing)} without a row, all within {WINDOW_S} s of the kill"
    )
    assert not late, f"rows lost for requests answered this long (s) before the kill: {late}"
    return len(missing)


def test_kill9_under_load_loses_at_most_the_batch_window(
    start_gateway: GatewayFactory, project: Path
) -> None:
    gw = start_gateway(project)
    answered, killed = load_and_kill(gw, clients=4, kill_after_s=3)
    assert len(answered) > 50
    restart_and_check(gw, project, answered, killed, None)


def test_kill9_while_the_database_is_down_loses_at_most_the_batch_window(
    start_gateway: GatewayFactory, project: Path, postgres: ThrowawayPostgres
) -> None:
    gw = start_gateway(project, database_url=postgres.url)
    time.sleep(0.5)
    postgres.stop()
    try:
        answered, killed = load_and_kill(gw, clients=4, kill_after_s=4)  # all of it during the outage
        assert len(answered) > 50
    finally:
        postgres.start()
    spooled = list((gw.data_dir / "spool" / "request-log").glob("*.jsonl"))
    assert spooled, "nothing was spooled"
    restart_and_check(gw, project, answered, killed, postgres.url)
