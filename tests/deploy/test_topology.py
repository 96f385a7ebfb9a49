"""opsgate scaled out across hosts: deploy/topology.sh's replicas, each in a network namespace of its own
with its own data dir, behind nginx, on a PostgreSQL, a Redis and a chroma server of the topology's own.

Under load through nginx (the load generator in the root namespace): every replica serves every index
version; a promotion reaches every replica within a second; rate limits and budgets hold across
replicas (Redis); a replica killed with kill -9 costs only the requests it had in flight (502s from
nginx), the rest are retried on the other replica, and no answered request loses its log row; a restart
of PostgreSQL, Redis or chroma is survived. Needs root (network namespaces): CI runs as root.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.deploy.topology import (
    INSTALL_DEPS,
    Topology,
    auth,
    free_topology_id,
    is_root,
    run_load,
    script_event,
)
from tests.fakes import netguard
from tests.fakes.gateway import REPO, build_project

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        not is_root(), reason="the netns topology needs root (ip netns, veth); CI runs as root"
    ),
]

PRICE = 1e-6  # $ per token, in and out: costs are token counts x 1e-6
RPM = 30
BUDGET_USD = 0.0003
CONCURRENCY = 8
KILL_WINDOW_S = 1.0  # the request log's batch window (0.2 s) plus its insert, on a shared 2-core machine
DOCS = {
    "docs/ports.md": "# Ports\nThe gateway listens on port 8080 by default.\n",
    "docs/keys.md": "# Keys\nThe first start writes an admin key to .opsgate/admin.key, readable only by you.\n",
    "docs/rollback.md": "# Rollback\nA rollback moves an alias back to an earlier version.\n",
}
POLICIES = f"""\
rules:
  - name: limited
    match: {{principals: [limited]}}
    checks:
      - {{type: rate_limit, rpm: {RPM}}}
  - name: spend
    match: {{principals: [spender]}}
    checks:
      - {{type: budget, usd_per_day: {BUDGET_USD}}}
  - name: counted
    match: {{principals: [counted]}}
    checks:
      - {{type: rate_limit, rpm: 1000000}}
"""
GREET = "name: greet\nrouter: default\nmessages:\n  - role: system\n    content: {content}\n"
CHAT = {"model": "default", "messages": [{"role": "user", "content": "Say hello to the replicas."}]}
RAG = {
    "model": "docs_qa",
    "messages": [{"role": "user", "content": "Which port does the gateway listen on?"}],
}


def git(project: Path, *args: str) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Doc Writer",
        "GIT_AUTHOR_EMAIL": "writer@example.com",
        "GIT_COMMITTER_NAME": "Doc Writer",
        "GIT_COMMITTER_EMAIL": "writer@example.com",
    }
    subprocess.run(["git", *args], cwd=project, env=env, check=True, capture_output=True)


def make_project(root: Path) -> Path:
    """The repo's config, a priced local router, limits and budgets for three principals, the docs_qa
    RAG prompt over three small docs, and a `greet` prompt to promote: a committed git repository."""
    priced = {
        "name": "priced",
        "deployments": [
            {
                "id": "local",
                "model": "local/extractive",
                "input_cost_per_token": PRICE,
                "output_cost_per_token": PRICE,
            }
        ],
    }
    files = {
        **DOCS,
        "config/routers/priced.yaml": yaml.safe_dump(priced, sort_keys=False),
        "config/policies.yaml": POLICIES,
        "prompts/docs_qa.yaml": (REPO / "prompts" / "docs_qa.yaml").read_text(encoding="utf-8"),
        "prompts/greet.yaml": GREET.format(content="Greet the user. (v1)"),
    }
    project = build_project(root, files=files)
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-q", "--allow-empty", "-m", "project")
    return project


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    subprocess.run(["bash", str(INSTALL_DEPS)], check=True, timeout=600)  # nginx on a clean CI machine
    topo = Topology(free_topology_id(), make_project(tmp_path_factory.mktemp("topology-project")))
    saved = os.environ.get(netguard.ALLOW_ENV)
    os.environ[netguard.ALLOW_ENV] = topo.allow  # the test process talks to the topology's network too
    try:
        yield topo.up(replicas=2)
    finally:
        topo.down()
        if saved is None:
            os.environ.pop(netguard.ALLOW_ENV, None)
        else:
            os.environ[netguard.ALLOW_ENV] = saved


def chat(http: httpx.Client, key: str, body: dict[str, Any], **extra: Any) -> httpx.Response:
    return http.post("/v1/chat/completions", headers=auth(key), json={**body, **extra})


def upstreams_of(topology: Topology, request_ids: set[str]) -> dict[str, str]:
    """request id -> the replica nginx got its answer from (the last upstream it tried)."""
    return {
        e["request_id"]: e["upstream"].split(", ")[-1]
        for e in topology.access_entries()
        if e["request_id"] in request_ids
    }


# -- serving ----------------------------------------------------------------------------------------------


def test_every_replica_serves_the_index_and_says_so(topology: Topology) -> None:
    for url in topology.replica_urls:
        status, ready = topology.readyz(url)
        assert status == 200, ready
        assert ready["checks"]["indexes"]["versions"]["index:docs@1"]["ok"] is True, ready
        assert ready["checks"]["indexes"]["store"] == "http://chroma:8000"
        with topology.http(url) as http:
            r = chat(http, topology.admin_key, RAG)
        assert r.status_code == 200, r.text
        assert r.json()["citations"][0]["source"] == "docs/ports.md"
        versions = topology.readyz(url)[1]["checks"]["indexes"]["versions"]
        assert versions == {"index:docs@1": {"ok": True, "lexical_loaded": True}}  # rebuilt from chroma
    ids = set()
    with topology.http() as http:
        for _ in range(6):
            r = chat(http, topology.admin_key, RAG)
            assert r.status_code == 200, r.text
            ids.add(r.headers["x-opsgate-request-id"])
    served_by = set(upstreams_of(topology, ids).values())
    assert served_by == {u.removeprefix("http://") for u in topology.replica_urls}  # nginx uses both


def test_a_promotion_reaches_every_replica_within_a_second(topology: Topology) -> None:
    greet = {"model": "greet", "messages": [{"role": "user", "content": "hello"}]}
    (topology.project / "prompts" / "greet.yaml").write_text(
        GREET.format(content="Greet the user warmly. (v2)"), encoding="utf-8"
    )
    git(topology.project, "commit", "-qam", "warmer greeting")
    synced = topology.admin("POST", "/sync", json={})
    assert [r for r in synced["registered"] if r.startswith("prompt:greet@2#")], synced
    approver = topology.create_key("approver-1", "approver")
    # the requester is not the admin who created the approver's key (four-eyes, issue 11.8d)
    engineer = topology.create_key("engineer-1", "prompt-engineer")
    promotion = topology.admin(
        "POST", "/promotions", key=engineer, json={"ref": "prompt:greet@2", "to": "production"}
    )
    approved = topology.admin("POST", f"/promotions/{promotion['id']}/approve", key=approver, json={})
    assert approved["state"] == "applied", approved

    def serves_v2(http: httpx.Client) -> bool:
        r = chat(http, topology.admin_key, greet)
        return r.status_code == 200 and "prompt:greet@2#" in r.headers["x-opsgate-versions"]

    with ThreadPoolExecutor(len(topology.replica_urls)) as pool:  # every replica polled at once
        started = time.monotonic()
        seen = list(
            pool.map(lambda url: _seconds_until(topology, url, serves_v2, started), topology.replica_urls)
        )
    assert max(seen) < 1.0, f"seconds until each replica served the promoted version: {seen}"


def _seconds_until(topology: Topology, url: str, check: Any, started: float) -> float:
    with topology.http(url) as http:
        while not check(http):
            assert time.monotonic() - started < 10, f"{url} still serves the old version"
            time.sleep(0.01)
    return time.monotonic() - started


# -- limits and budgets -------------------------------------------------------------------------------------


async def _burst(url: str, key: str, body: dict[str, Any], n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=30) as http:
        return list(
            await asyncio.gather(
                *(http.post("/v1/chat/completions", headers=auth(key), json=body) for _ in range(n))
            )
        )


def test_rate_limits_and_budgets_hold_across_replicas(topology: Topology) -> None:
    """One Redis: the replicas share each key's bucket and ledger. In-process counters would admit up to
    2x the limit here (each replica its own)."""
    limited = topology.create_key("limited", "app")
    started = time.monotonic()
    answers = asyncio.run(_burst(topology.url, limited, CHAT, 3 * RPM))
    elapsed = time.monotonic() - started
    admitted = [r for r in answers if r.status_code == 200]
    refused = [r for r in answers if r.status_code == 429]
    assert len(admitted) + len(refused) == len(answers), {r.status_code for r in answers}
    assert all(r.json()["error"]["code"] == "rate_limit_exceeded" for r in refused)
    # documented bound (docs/policies.md): a burst of rpm, then rpm per minute
    assert RPM <= len(admitted) <= RPM + int(RPM * elapsed / 60) + 1, (len(admitted), elapsed)
    served_by = upstreams_of(topology, {r.headers["x-opsgate-request-id"] for r in answers})
    assert len(set(served_by.values())) == 2  # both replicas answered, from one shared bucket

    spender = topology.create_key("spender", "app")
    body = {**CHAT, "model": "priced", "max_tokens": 10}
    answers = asyncio.run(_burst(topology.url, spender, body, 40))
    admitted = [r for r in answers if r.status_code == 200]
    assert {r.json()["error"]["code"] for r in answers if r.status_code != 200} == {"budget_exceeded"}
    spent = _costs(topology, {r.headers["x-opsgate-request-id"] for r in admitted})
    # max_tokens caps every answer, so each reservation covers its true cost: no overshoot at all
    assert 0 < sum(spent) <= BUDGET_USD, (len(admitted), sum(spent))
    assert sum(spent) > BUDGET_USD / 2
    # both replicas took part, and together they spent one budget (a ledger each would allow two)
    served_by = upstreams_of(topology, {r.headers["x-opsgate-request-id"] for r in answers})
    assert len(set(served_by.values())) == 2


def _costs(topology: Topology, ids: set[str]) -> list[float]:
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from gateway.db.models import RequestLog

    assert not topology.missing_rows(ids, timeout=20)
    with Session(topology._engine) as session:
        return [
            float(c or 0) for c in session.scalars(select(RequestLog.cost_usd).where(RequestLog.id.in_(ids)))
        ]


# -- faults ---------------------------------------------------------------------------------------------------


def test_kill_9_of_a_replica_under_load(topology: Topology) -> None:
    """Only the requests the killed replica had taken fail (502 from nginx, or a response cut off after
    its header when the replica died mid-write; no complete answer was sent); nginx
    retries the rest on the other replica; every answered request keeps its log row but those answered
    within the batch window before the kill (the killed replica's spool is replayed when it starts again
    on its data dir)."""
    key = topology.create_key("load-kill", "app")
    kill_at = 2.5
    result = asyncio.run(
        run_load(
            topology.url,
            key,
            CHAT,
            concurrency=CONCURRENCY,
            duration_s=8,
            events=[(kill_at, "kill r1", script_event(topology, "kill", "r1"))],
        )
    )
    killed = result.events["kill r1"]
    print(f"kill -9 under load: {result.summary()}")
    assert len(result.answered) > 100, result.summary()
    for failure in result.failed:
        # nginx's 502 (never a replica's 500), or a response cut off: r1 died between its header and body
        cut = failure.status == 0 and "RemoteProtocolError" in failure.error
        assert failure.status == 502 or cut, (failure, result.summary())
        assert killed <= failure.ended <= killed + 2, (failure, result.summary())
    # each client has one request in flight: those r1 held when it died (or took while its sockets were
    # being closed, before nginx saw the first failure and stopped sending it more) are all that fail
    assert len(result.failed) <= CONCURRENCY, result.summary()
    after = [o for o in result.outcomes if o.started > killed + 1]
    assert after and all(o.status == 200 for o in after), result.summary()
    r1 = topology.replica_urls[0].removeprefix("http://")
    retried = [
        e for e in topology.access_entries() if e["upstream"].startswith(f"{r1}, ") and e["status"] == 200
    ]
    assert retried, "nginx never retried a request on the other replica"  # r1 was tried again, refused

    topology.sh("start", "r1")  # same data dir: replays what it had not written
    answered = {o.request_id for o in result.answered if o.request_id}
    missing = topology.missing_rows(answered, timeout=30)
    print(f"kill -9: {len(answered)} answered, {len(missing)} without a log row after r1 restarted")
    assert topology.spool_enabled()
    # What a kill -9 costs is the rows still in memory: requests answered within the last batch window
    # (request_log.flush_interval_s, 0.2 s, plus the insert); everything older is in PostgreSQL or in the
    # killed replica's spool, replayed when it started again (docs/operations.md, "Faults").
    dead = result.events["kill r1 done"]
    ended = {o.request_id: o.ended for o in result.answered if o.request_id}
    late = {i: round(dead - ended[i], 3) for i in missing if dead - ended[i] > KILL_WINDOW_S}
    assert not late, f"rows lost for requests answered this long (s) before the kill: {late}"


def test_postgres_restart_under_load(topology: Topology) -> None:
    key = topology.create_key("load-pg", "app")
    result = asyncio.run(
        run_load(
            topology.url,
            key,
            CHAT,
            concurrency=4,
            duration_s=8,
            events=[(2, "restart postgres", script_event(topology, "restart", "postgres"))],
        )
    )
    assert "restart postgres done" in result.events
    assert not result.failed, result.summary()  # answered from memory while the database is away
    answered = {o.request_id for o in result.answered if o.request_id}
    missing = topology.missing_rows(answered, timeout=40)
    assert not missing, f"{len(missing)} of {len(answered)} rows never arrived after the restart"
    for url in topology.replica_urls:
        assert topology.readyz(url)[0] == 200


def test_redis_restart_under_load(topology: Topology) -> None:
    """Limits fail open while Redis is away (on_store_error: allow, the default) and hold again once it is
    back; the counters survive the restart (the topology's Redis keeps an append-only file)."""
    limited = topology.create_key("limited-2", "app", principal="limited")
    exhausted = asyncio.run(_burst(topology.url, limited, CHAT, 2 * RPM))
    assert [r for r in exhausted if r.status_code == 429]
    time.sleep(1.5)  # the append-only file is fsync'd every second
    counted = topology.create_key("load-redis", "app", principal="counted")
    result = asyncio.run(
        run_load(
            topology.url,
            counted,
            CHAT,
            concurrency=4,
            duration_s=8,
            events=[(2, "restart redis", script_event(topology, "restart", "redis"))],
        )
    )
    assert "restart redis done" in result.events
    assert topology.redis_tracked()  # /readyz reports Redis (and its on_store_error)
    assert not result.failed, result.summary()
    deadline = time.monotonic() + 15
    with topology.http() as http:
        while chat(http, limited, CHAT).status_code != 429:
            assert time.monotonic() < deadline, "the rate limit does not hold again after the Redis restart"
            time.sleep(0.2)
    answered = {o.request_id for o in result.answered if o.request_id}
    assert not topology.missing_rows(answered, timeout=30)


def test_chroma_outage_across_replicas(topology: Topology) -> None:
    topology.sh("stop", "chroma")
    try:
        with topology.http() as http:
            for _ in range(4):  # both replicas, round robin
                r = chat(http, topology.admin_key, RAG)
                assert r.status_code == 503, r.text
                assert r.json()["error"]["code"] == "index_store_unavailable"
                assert chat(http, topology.admin_key, CHAT).status_code == 200
        for url in topology.replica_urls:
            assert topology.readyz(url)[0] == 200  # shared by all: reported, not a reason to pull them
    finally:
        topology.sh("start", "chroma")
    for url in topology.replica_urls:
        deadline = time.monotonic() + 15
        with topology.http(url) as http:
            while (r := chat(http, topology.admin_key, RAG)).status_code != 200:
                assert time.monotonic() < deadline, r.text
                time.sleep(0.2)
