"""Replicas on one registry (PostgreSQL) and one chroma server: every replica serves every index version.

Each replica here has a data dir of its own, as on separate hosts: the chunks live only in chroma, the
lexical (BM25) side is rebuilt from them, and `/readyz` says which aliased index versions a replica can
open. The netns topology (tests/deploy/) runs the same across network namespaces, under load.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.fakes.gateway import BIN, GatewayProcess, free_port, subprocess_env
from tests.retrieval.test_rag_e2e import DOCS, ask

pytestmark = pytest.mark.postgres
KEYS_QUESTION = "Where is the admin key written?"
GOOD_DOCS = {k: v for k, v in DOCS.items() if k != "docs/bad.md"}


class ChromaServer:
    """`chroma run` on 127.0.0.1 with a data dir, stopped and started again by the tests."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ChromaServer:
        with open(self.path.parent / f"{self.path.name}.log", "ab") as log:
            self.process = subprocess.Popen(
                [
                    str(BIN / "chroma"),
                    "run",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--path",
                    str(self.path),
                ],
                env=subprocess_env({"ANONYMIZED_TELEMETRY": "False"}),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        with httpx.Client(trust_env=False, timeout=2) as http:
            while True:
                try:
                    if http.get(f"{self.url}/api/v2/heartbeat").status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "chroma run was not ready in time"
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def chroma(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaServer]:
    server = ChromaServer(tmp_path_factory.mktemp("chroma")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., GatewayProcess]]:
    """Gateway processes with a data dir each (as on separate hosts), not yet started."""
    made: list[GatewayProcess] = []

    def make(project: Path, database: str, env: dict[str, str], **kw: Any) -> GatewayProcess:
        gw = GatewayProcess(
            project, data_dir=tmp_path_factory.mktemp("data"), database_url=database, env=env, **kw
        )
        made.append(gw)
        return gw

    yield make
    for gw in made:
        gw.stop()


@dataclass
class Pair:
    project: Path
    database: str
    env: dict[str, str]
    first: GatewayProcess
    second: GatewayProcess


@pytest.fixture(scope="module")
def pair(
    rag_project: Callable[..., Path],
    replicas: Callable[..., GatewayProcess],
    chroma: ChromaServer,
    new_pg_database: Callable[[], str],
) -> Pair:
    """Two replicas on one database and chroma server, started one after the other: the first builds."""
    project, database, env = rag_project(GOOD_DOCS), new_pg_database(), {"OPSGATE_CHROMA_URL": chroma.url}
    first = replicas(project, database, env).start()
    second = replicas(project, database, env, admin_key=first.admin_key).start()
    return Pair(project, database, env, first, second)


def readyz(gw: GatewayProcess) -> tuple[int, dict[str, Any]]:
    with gw.http() as http:
        r = http.get("/readyz")
    return r.status_code, r.json()


def chat(gw: GatewayProcess, question: str = KEYS_QUESTION) -> httpx.Response:
    with gw.http() as http:
        return http.post(
            "/v1/chat/completions",
            headers=gw.auth(),
            json={"model": "docs_qa", "messages": [{"role": "user", "content": question}]},
        )


def start_without_waiting(gw: GatewayProcess) -> GatewayProcess:
    """Start a replica that is expected to stay unready: wait until it has started, whatever /readyz says."""

    def started() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert gw.process is not None and gw.process.poll() is None, gw.output()
            try:
                if readyz(gw)[1]["checks"]["started"]:
                    return
            except (httpx.TransportError, ValueError, KeyError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"the replica did not start:\n{gw.output()}")

    gw._wait_ready = started  # type: ignore[method-assign]
    return gw.start()


def test_second_replica_serves_the_index_built_by_the_first(pair: Pair, chroma: ChromaServer) -> None:
    second = pair.second
    assert not (second.data_dir / "lexical").exists()  # nothing of the index on its disk
    body, _ = ask(second, KEYS_QUESTION)
    assert body["choices"][0]["message"]["content"].endswith("[docs/keys#0]")
    assert body["citations"][0]["source"] == "docs/keys.md"
    status, ready = readyz(second)
    assert status == 200
    assert ready["checks"]["indexes"]["store"] == chroma.url
    assert ready["checks"]["indexes"]["versions"] == {"index:docs@1": {"ok": True, "lexical_loaded": True}}


def test_replicas_started_together_bootstrap_once(
    rag_project: Callable[..., Path],
    replicas: Callable[..., GatewayProcess],
    chroma: ChromaServer,
    new_pg_database: Callable[[], str],
) -> None:
    """A fresh database and N replicas at once (compose, Helm): one registers and builds, the rest wait."""
    project, database, env = rag_project(GOOD_DOCS), new_pg_database(), {"OPSGATE_CHROMA_URL": chroma.url}
    gws = [replicas(project, database, env) for _ in range(2)]
    with ThreadPoolExecutor(len(gws)) as pool:
        list(pool.map(GatewayProcess.start, gws))
    (first,) = [g for g in gws if (g.data_dir / "admin.key").exists()]  # one first admin key
    for gw in gws:
        gw.admin_key = first.admin_key
        assert chat(gw).json()["citations"][0]["source"] == "docs/keys.md"
    listed = [orjson.loads(line) for line in first.cli("index", "list", "--json").stdout.splitlines()]
    assert [v["version"] for v in next(i["versions"] for i in listed if i["name"] == "docs")] == [1]


def test_replica_on_a_local_store_beside_a_shared_registry_is_not_ready(
    rag_project: Callable[..., Path],
    replicas: Callable[..., GatewayProcess],
    new_pg_database: Callable[[], str],
) -> None:
    """The misconfiguration behind 'ready, then 503 index_unavailable': no OPSGATE_CHROMA_URL on replicas
    that share PostgreSQL. The first keeps `docs` in its own data dir; the second cannot serve it."""
    project, database = rag_project(GOOD_DOCS), new_pg_database()
    first = replicas(project, database, {}).start()
    second = start_without_waiting(replicas(project, database, {}, admin_key=first.admin_key))
    status, ready = readyz(second)
    assert status == 503, ready
    indexes = ready["checks"]["indexes"]
    assert indexes["store"] == f"local {second.data_dir.resolve() / 'chroma'}"
    assert indexes["versions"]["index:docs@1"]["code"] == "index_unavailable"
    assert "OPSGATE_CHROMA_URL" in indexes["error"]
    r = chat(second)
    assert r.status_code == 503 and r.json()["error"]["code"] == "index_unavailable"
    assert readyz(first)[0] == 200  # the replica that holds it is ready


def test_replicas_heal_when_a_lost_collection_is_rebuilt(pair: Pair, chroma: ChromaServer) -> None:
    """A chroma server that lost its data: `opsgate index build` restores the same version under the same
    name; replicas that had it open follow the name to the new collection without a restart."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    assert chat(pair.second).status_code == 200
    client = chromadb.HttpClient(
        host="127.0.0.1", port=chroma.port, settings=ChromaSettings(anonymized_telemetry=False)
    )
    (name,) = [c.name for c in client.list_collections() if c.name.startswith("opsgate-docs-v1-")]
    client.delete_collection(name)
    r = chat(pair.second)
    assert r.status_code == 503 and r.json()["error"]["code"] in (
        "index_store_unavailable",
        "index_unavailable",
    )
    out = pair.first.cli("index", "build", "docs", "--quiet", key=pair.first.admin_key).stdout
    assert out.startswith("restored index:docs@1#"), out
    for gw in (pair.first, pair.second):
        r = chat(gw)
        assert r.status_code == 200, r.text
        assert r.json()["citations"][0]["source"] == "docs/keys.md"


def test_chroma_outage_is_a_503_that_heals_and_readiness_reports_it(
    pair: Pair, replicas: Callable[..., GatewayProcess], chroma: ChromaServer
) -> None:
    warm = pair.second
    assert chat(warm).status_code == 200
    chroma.stop()
    try:
        # a replica that starts while chroma is down (it has never opened the index)
        cold = replicas(pair.project, pair.database, pair.env, admin_key=pair.first.admin_key).start()
        for gw in (warm, cold):
            r = chat(gw)
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "index_store_unavailable"
            assert chroma.url in r.json()["error"]["message"]
            assert (
                readyz(gw)[0] == 200
            )  # every replica shares this fault: reported, not a reason to pull them all
        assert readyz(cold)[1]["checks"]["indexes"]["versions"]["index:docs@1"]["ok"] is False
        with cold.http() as http:  # chat without retrieval is unaffected
            plain = http.post(
                "/v1/chat/completions",
                headers=cold.auth(),
                json={"model": "default", "messages": [{"role": "user", "content": "hello"}]},
            )
        assert plain.status_code == 200, plain.text
    finally:
        chroma.start()
    for gw in (warm, cold):
        deadline = time.monotonic() + 10
        while (r := chat(gw)).status_code != 200:
            assert time.monotonic() < deadline, r.text
            time.sleep(0.2)
        assert r.json()["citations"][0]["source"] == "docs/keys.md"
        assert readyz(gw)[1]["checks"]["indexes"]["versions"]["index:docs@1"]["ok"] is True
