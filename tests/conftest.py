"""Shared fixtures: real servers on 127.0.0.1 and real stores, no mocks of our own code.

    fake_upstream                  (session) an OpenAI-compatible server with fault modes
                                   (tests/fakes/upstream.py): .url(mode) .refused_url .requests
                                   .hits(mode) .count(mode) .clear() .add_mode(name, handler)
    pg_url                         (session) a fresh PostgreSQL database, dropped at the end
    new_pg_database()              (session) factory: another fresh database, dropped at the end
    db_url                         (module) "sqlite" / "postgres": a fresh database URL of each kind
    make_project(routers, files)   (function) a temp project dir: repo config/ + routers + files, a git
                                   repository with all of it committed (git=False: a plain directory;
                                   tests/fakes/gateway.py `commit_project` commits later changes)
    project_factory                (session) the same factory, for module-scoped fixtures
    start_gateway(project_dir, *, database_url=None, env=None, port=None, admin_key=None)
                                   (function) the real `opsgate serve` subprocess, started and ready
                                   (tests/fakes/gateway.py: GatewayProcess); stopped after the test.
                                   On a database that already has keys no admin.key is written: pass
                                   an admin key of that database, or the handle creates one with the CLI
    gateway_factory                (session) the same, for module-scoped fixtures (use `with`, or .stop())
    cli_for(project, extra_env)    (function) the `opsgate` CLI on a project with a fresh data dir, no
                                   gateway (tests/fakes/gateway.py: Cli; .first_admin_key())
    spine_gateway                  (session) one gateway on the repo's config with a 64 KiB body limit and
                                   routers `other` (local) and `flaky` (fake 500, then fake ok), shared
                                   by the API, metrics and CLI tests; start your own to change its config

Importing this file makes the process offline (gateway.offline) and installs the network guard
(tests/fakes/netguard.py) here and in every subprocess: only 127.0.0.1 may be reached, and the session
fails if anything even tried to reach further.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from gateway.offline import apply_offline_env
from tests.fakes import netguard
from tests.fakes.gateway import (
    SPINE_GATEWAY_YAML,
    Cli,
    GatewayProcess,
    build_project,
    deployment,
    project_cli,
)
from tests.fakes.upstream import FakeUpstream

apply_offline_env()
_NETGUARD_LOG = Path(tempfile.mkstemp(prefix="opsgate-netguard-", suffix=".log")[1])
os.environ[netguard.LOG_ENV] = str(_NETGUARD_LOG)
netguard.install()

PG_ADMIN_URL = os.environ.get("OPSGATE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")

ProjectFactory = Callable[..., Path]
GatewayFactory = Callable[..., GatewayProcess]


@pytest.fixture(scope="session", autouse=True)
def _no_network_attempts() -> Iterator[None]:
    yield
    attempts = _NETGUARD_LOG.read_text(encoding="utf-8")
    _NETGUARD_LOG.unlink(missing_ok=True)
    assert not attempts, f"something tried to reach the network:\n{attempts}"


# -- upstream ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream().start()
    yield upstream
    upstream.stop()


# -- databases --------------------------------------------------------------------------------------------


def _pg_admin() -> Any:
    import psycopg

    return psycopg.connect(PG_ADMIN_URL, autocommit=True)


@pytest.fixture(scope="session")
def new_pg_database() -> Iterator[Callable[[], str]]:
    created: list[str] = []

    def create() -> str:
        name = f"opsgate_t_{secrets.token_hex(6)}"
        with _pg_admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"

    yield create
    with _pg_admin() as conn:
        for name in created:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_url(new_pg_database: Callable[[], str]) -> str:
    return new_pg_database()


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
    ids=["sqlite", "postgres"],
)
def db_url(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    new_pg_database: Callable[[], str],
) -> str:
    """A fresh database per module and backend (a gateway's first start creates its admin key there)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'opsgate.db'}"
    return new_pg_database()


# -- projects and gateways -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def project_factory(tmp_path_factory: pytest.TempPathFactory) -> ProjectFactory:
    def make(
        routers: Mapping[str, str | Mapping[str, Any]] | None = None,
        files: Mapping[str, str] | None = None,
        *,
        git: bool = True,
    ) -> Path:
        return build_project(tmp_path_factory.mktemp("project"), routers, files, git=git)

    return make


@pytest.fixture
def make_project(project_factory: ProjectFactory) -> ProjectFactory:
    return project_factory


@pytest.fixture
def cli_for(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Cli]:
    """`cli_for(project, extra_env)`: the `opsgate` command on that project with a fresh data directory."""

    def make(project: Path, extra_env: Mapping[str, str] | None = None) -> Cli:
        return project_cli(project, tmp_path_factory.mktemp("data"), extra_env)

    return make


@pytest.fixture(scope="session")
def gateway_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayFactory]:
    started: list[GatewayProcess] = []

    def start(
        project_dir: Path,
        *,
        database_url: str | None = None,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        admin_key: str | None = None,
    ) -> GatewayProcess:
        data_dir = tmp_path_factory.mktemp("data")
        gateway = GatewayProcess(
            project_dir, data_dir=data_dir, database_url=database_url, env=env, port=port, admin_key=admin_key
        )
        started.append(gateway)
        return gateway.start()

    yield start
    for gateway in started:
        gateway.stop()


@pytest.fixture
def start_gateway(gateway_factory: GatewayFactory) -> Iterator[GatewayFactory]:
    mine: list[GatewayProcess] = []

    def start(project_dir: Path, **kw: Any) -> GatewayProcess:
        gateway = gateway_factory(project_dir, **kw)
        mine.append(gateway)
        return gateway

    yield start
    for gateway in mine:
        gateway.stop()


@pytest.fixture(scope="session")
def spine_gateway(
    project_factory: ProjectFactory, gateway_factory: GatewayFactory, fake_upstream: FakeUpstream
) -> Iterator[GatewayProcess]:
    routers: dict[str, Any] = {
        "other": {"deployments": [{"id": "local", "model": "local/extractive"}]},
        "flaky": {
            "deployments": [
                deployment("bad", fake_upstream.url("500-spine")),
                deployment("good", fake_upstream.url("ok-spine")),
            ]
        },
    }
    project = project_factory(routers=routers, files={"config/gateway.yaml": SPINE_GATEWAY_YAML})
    with gateway_factory(project) as gateway:
        yield gateway
