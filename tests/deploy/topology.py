"""The netns topology of deploy/topology.sh, driven from tests: up/down, faults, the admin API through
nginx, the request log in the topology's PostgreSQL, and a load generator in the root namespace.

The topology's hosts live on a private test network (10.231.<id>.0/24) that the network guard is told to
allow (tests/fakes/netguard.py, OPSGATE_TEST_NETGUARD_ALLOW), here and in the replicas.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from tests.fakes import netguard
from tests.fakes.gateway import BIN, REPO, subprocess_env

SCRIPT = REPO / "deploy" / "topology.sh"
INSTALL_DEPS = REPO / "deploy" / "install-deps.sh"


def free_topology_id(first: int = 40, last: int = 99) -> int:
    """An id no other topology on this machine uses (its namespaces, bridge and state dir are per id)."""
    used = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    for candidate in range(first, last + 1):
        taken = f"opsgate{candidate}-r1" in used or Path(f"/tmp/opsgate-topology-{candidate}").exists()
        if not taken and not Path(f"/sys/class/net/og{candidate}br").exists():
            return candidate
    raise RuntimeError(f"every topology id {first}-{last} is in use; run deploy/topology.sh down on some")


class Topology:
    def __init__(self, topology_id: int, project: Path) -> None:
        self.id = topology_id
        self.project = project
        self.network = f"10.231.{topology_id}.0/24"
        self.allow = f"{self.network},postgres,redis,chroma"
        self.values: dict[str, str] = {}
        self._engine: Any = None

    # -- the script ------------------------------------------------------------------------------------

    def sh(self, *args: str, timeout: float = 600) -> str:
        env = subprocess_env(
            {
                "OPSGATE_TOPOLOGY_ID": str(self.id),
                "OPSGATE_PROJECT_DIR": str(self.project),
                "OPSGATE_BIN": str(BIN / "opsgate"),
                netguard.ALLOW_ENV: self.allow,
            }
        )
        result = subprocess.run(
            ["bash", str(SCRIPT), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(
                f"deploy/topology.sh {' '.join(args)} exited {result.returncode}\n{result.stderr}\n{self.logs()}"
            )
        return result.stdout

    def up(self, replicas: int = 2) -> Topology:
        out = self.sh("up", "--replicas", str(replicas))
        self.values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        return self

    def down(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
        self.sh("down", timeout=180)

    def logs(self, lines: int = 30) -> str:
        state = Path(f"/tmp/opsgate-topology-{self.id}")
        out = []
        for log in sorted(state.glob("r*/serve.log")) + sorted(state.glob("*/*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log}\n" + "\n".join(text))
        return "\n".join(out)

    # -- addresses and clients ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.values["TOPOLOGY_URL"]

    @property
    def replica_urls(self) -> list[str]:
        count = int(self.values["TOPOLOGY_REPLICAS"])
        return [self.values[f"TOPOLOGY_R{i}_URL"] for i in range(1, count + 1)]

    @property
    def admin_key(self) -> str:
        return Path(self.values["TOPOLOGY_ADMIN_KEY_FILE"]).read_text(encoding="utf-8").strip()

    @property
    def access_log(self) -> Path:
        return Path(self.values["TOPOLOGY_DIR"]) / "nginx" / "access.log"

    def access_entries(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.access_log.read_bytes().splitlines() if line.strip()]

    def http(self, base_url: str | None = None, **kw: Any) -> httpx.Client:
        kw.setdefault("timeout", 30)
        return httpx.Client(base_url=base_url or self.url, trust_env=False, **kw)

    def admin(self, method: str, path: str, *, key: str | None = None, json: Any = None) -> Any:
        with self.http() as http:
            r = http.request(
                method,
                f"/admin{path}",
                json=json,
                headers={"Authorization": f"Bearer {key or self.admin_key}"},
            )
        assert r.status_code < 300, f"{method} /admin{path}: {r.status_code} {r.text}"
        return r.json()

    def create_key(self, name: str, role: str, principal: str | None = None) -> str:
        body = {"name": name, "roles": [role], "principal": principal or name}
        key = str(self.admin("POST", "/keys", json=body)["key"])
        self.wait_everywhere(lambda http: http.get("/v1/models", headers=auth(key)).status_code == 200)
        return key

    def wait_everywhere(self, check: Callable[[httpx.Client], bool], timeout: float = 10) -> list[float]:
        """Seconds until `check` held on each replica (asked directly, not through nginx)."""
        started = time.monotonic()
        took = []
        for url in self.replica_urls:
            with self.http(url) as http:
                while not check(http):
                    assert time.monotonic() - started < timeout, f"{url} did not catch up in {timeout} s"
                    time.sleep(0.02)
            took.append(time.monotonic() - started)
        return took

    def readyz(self, url: str) -> tuple[int, dict[str, Any]]:
        with self.http(url) as http:
            r = http.get("/readyz")
        return r.status_code, r.json()

    # -- the request log -----------------------------------------------------------------------------------

    def logged(self, ids: Iterable[str]) -> set[str]:
        from sqlalchemy import select
        from sqlalchemy.orm import Session

        from gateway.db.engine import make_engine
        from gateway.db.models import RequestLog

        if self._engine is None:
            self._engine = make_engine(self.values["TOPOLOGY_DATABASE_URL"])
        wanted = list(set(ids))
        found: set[str] = set()
        with Session(self._engine) as session:
            for start in range(0, len(wanted), 1000):
                chunk = wanted[start : start + 1000]
                found.update(session.scalars(select(RequestLog.id).where(RequestLog.id.in_(chunk))))
        return found

    def missing_rows(self, ids: Iterable[str], timeout: float = 30) -> set[str]:
        """The ids with no log row once `timeout` has passed (returns early when none is missing)."""
        wanted = set(ids)
        deadline = time.monotonic() + timeout
        while True:
            missing = wanted - self.logged(wanted)
            if not missing or time.monotonic() > deadline:
                return missing
            time.sleep(0.25)

    def spool_enabled(self) -> bool:
        """Whether the replicas spool their request log to disk first ([infra]'s write-ahead spool)."""
        _, body = self.readyz(self.replica_urls[-1])
        spool = body.get("checks", {}).get("request_log", {}).get("spool", {})
        return bool(spool.get("enabled"))

    def redis_tracked(self) -> bool:
        """Whether the replicas track Redis as a dependency in /readyz ([infra]'s Redis handling)."""
        _, body = self.readyz(self.replica_urls[-1])
        return "redis" in body.get("checks", {})


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# -- load ----------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    started: float  # seconds since the load began
    ended: float
    status: int  # 0: no HTTP answer at all (the client's connection failed)
    request_id: str | None
    error: str = ""


@dataclass
class LoadResult:
    outcomes: list[Outcome] = field(default_factory=list)
    events: dict[str, float] = field(default_factory=dict)  # event name -> seconds since the load began

    @property
    def answered(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == 200 and o.request_id]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != 200]

    def summary(self) -> str:
        statuses: dict[int, int] = {}
        for o in self.outcomes:
            statuses[o.status] = statuses.get(o.status, 0) + 1
        return f"{len(self.outcomes)} requests, statuses {statuses}, events {self.events}"


async def run_load(
    url: str,
    key: str,
    body: dict[str, Any],
    *,
    concurrency: int,
    duration_s: float,
    events: Iterable[tuple[float, str, Callable[[], Awaitable[Any]]]] = (),
) -> LoadResult:
    """`concurrency` clients posting `body` to url/v1/chat/completions back to back for `duration_s`,
    with `events` (at seconds, name, coroutine factory) run meanwhile, e.g. a kill -9."""
    result = LoadResult()
    began = time.monotonic()
    payload = orjson.dumps(body)
    headers = {**auth(key), "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client(http: httpx.AsyncClient) -> None:
        while (now := time.monotonic() - began) < duration_s:
            try:
                r = await http.post("/v1/chat/completions", content=payload, headers=headers)
                outcome = Outcome(
                    now, time.monotonic() - began, r.status_code, r.headers.get("x-opsgate-request-id")
                )
                if r.status_code != 200:
                    outcome.error = r.text[:300]
            except httpx.HTTPError as exc:
                outcome = Outcome(now, time.monotonic() - began, 0, None, f"{type(exc).__name__}: {exc}")
            result.outcomes.append(outcome)

    async def event(at: float, name: str, run: Callable[[], Awaitable[Any]]) -> None:
        await asyncio.sleep(max(0.0, at - (time.monotonic() - began)))
        result.events[name] = time.monotonic() - began
        await run()
        result.events[f"{name} done"] = time.monotonic() - began

    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=30, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)), *(event(*e) for e in events))
    return result


def script_event(topology: Topology, *args: str) -> Callable[[], Awaitable[Any]]:
    """A load event that runs deploy/topology.sh (off the event loop, so the load goes on)."""

    async def run() -> None:
        await asyncio.to_thread(topology.sh, *args)

    return run


def is_root() -> bool:
    return os.geteuid() == 0
