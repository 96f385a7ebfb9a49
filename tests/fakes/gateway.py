"""Test projects and the REAL gateway run as a subprocess (`opsgate serve`) on 127.0.0.1.

`build_project` writes a project directory (config copied from the repo, plus routers and files);
`GatewayProcess.start` runs `opsgate serve` on a free port with its own data directory, waits for
`/readyz`, and gives the URLs, the admin key, the CLI with the same environment, official `openai`
clients, and the request log (through `opsgate logs query`, or read straight from the database).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
import orjson
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
OPSGATE = str(BIN / "opsgate")
SITE_DIR = Path(__file__).resolve().parent / "site"
START_TIMEOUT_S = 60
# config/gateway.yaml for test projects: log rows and key changes land fast, so tests wait little.
FAST_GATEWAY_YAML = "request_log:\n  flush_interval_s: 0.02\ncache:\n  refresh_interval_s: 0.2\n"
# The shared spine gateway (conftest `spine_gateway`): small body limit, fast log, default key refresh.
SPINE_MAX_BODY = 64 * 1024
SPINE_GATEWAY_YAML = f"server:\n  max_body_bytes: {SPINE_MAX_BODY}\nrequest_log:\n  flush_interval_s: 0.02\n"
# Fake upstreams and webhook receivers listen on 127.0.0.1, which egress rules allow only when listed:
# `build_project` appends this to a config/gateway.yaml that has no `egress:` section of its own.
LOOPBACK_EGRESS_YAML = (
    "egress:\n"
    "  hosts: ['127.0.0.1:*', 'localhost:*']\n"
    "  api_key_envs: ['*_API_KEY', 'FAKE_*']\n"
    "  webhook_hosts: ['127.0.0.1:*']\n"
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def subprocess_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every process the tests start: offline, net-guarded, this source tree first."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("OPSGATE_") or k.startswith("OPSGATE_TEST")
    }
    path = [str(SITE_DIR), str(REPO)]
    if env.get("PYTHONPATH"):
        path.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(path)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def _no_models(folder: str, names: list[str]) -> list[str]:
    # the demo model and the pipeline that makes it (which reads data/, not copied) stay out of test projects
    return ["models", "pipelines"] if Path(folder) == REPO / "config" else []


def build_project(
    root: Path,
    routers: Mapping[str, str | Mapping[str, Any]] | None = None,
    files: Mapping[str, str] | None = None,
    *,
    git: bool = True,
) -> Path:
    """A project directory: the repo's config/ copied, then router files (YAML text or a dict), then files.

    Like a user's project it is a git repository with everything committed (one commit), since a first
    start registers only committed files; `git=False` leaves it a plain directory. Files written later are
    uncommitted until `commit_project`. The repo's demo classic model (config/models/) is left out: a
    gateway waits for its models to load before it is ready, and only the tests about models need one
    (they write their own, or copy it)."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "config", root / "config", dirs_exist_ok=True, ignore=_no_models)
    for name, spec in (routers or {}).items():
        text = spec if isinstance(spec, str) else yaml.safe_dump({"name": name, **spec}, sort_keys=False)
        (root / "config" / "routers" / f"{name}.yaml").write_text(text, encoding="utf-8")
    for rel, text in (files or {}).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    allow_loopback(root)
    if git:
        if not (root / ".gitignore").exists():
            (root / ".gitignore").write_text(".opsgate/\n", encoding="utf-8")
        commit_project(root, "test project")
    return root


GIT_IDENTITY = ("opsgate tests", "tests@example.com")


def commit_project(root: Path, message: str = "changes", *, author: tuple[str, str] = GIT_IDENTITY) -> str:
    """`git add -A && git commit` in `root` (initialising the repository the first time); returns the sha."""
    name, email = author
    config = ["-c", f"user.name={name}", "-c", f"user.email={email}", "-c", "commit.gpgsign=false"]

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(root), *config, *args], capture_output=True, text=True, check=True
        )
        return done.stdout

    if not (root / ".git").exists():
        git("init", "-q", "-b", "main")
    git("add", "-A")
    git("commit", "-q", "--allow-empty", "-m", message)
    return git("rev-parse", "HEAD").strip()


def allow_loopback(root: Path) -> None:
    """Let a test project call 127.0.0.1 (unless its config/gateway.yaml has its own egress section)."""
    file = root / "config" / "gateway.yaml"
    text = file.read_text(encoding="utf-8") if file.exists() else ""
    if not any(line.startswith("egress:") for line in text.splitlines()):
        file.write_text(text + ("\n" if text and not text.endswith("\n") else "") + LOOPBACK_EGRESS_YAML)


def deployment(
    dep_id: str, api_base: str, *, adapter: str = "auto", model: str = "openai/fake", **fields: Any
) -> dict[str, Any]:
    """A router deployment dict pointing at an upstream URL (e.g. `fake_upstream.url("500")`)."""
    return {"id": dep_id, "model": model, "api_base": api_base, "adapter": adapter, **fields}


@dataclass
class Cli:
    """`opsgate` run as a user runs it, in a project with its own data directory (no gateway needed for
    the commands that read files: sync, index build, keys)."""

    project: Path
    data_dir: Path
    env: dict[str, str]

    def __call__(
        self, *args: str, key: str | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        env = dict(self.env)
        if key is not None:
            env["OPSGATE_API_KEY"] = key
        return subprocess.run(
            [OPSGATE, *args],
            cwd=self.project,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def first_admin_key(self) -> str:
        done = self("keys", "create", "--name", "owner", "--role", "admin")
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()[-1]


def project_cli(project: Path, data_dir: Path, extra_env: Mapping[str, str] | None = None) -> Cli:
    env = subprocess_env(
        {"OPSGATE_PROJECT_DIR": str(project), "OPSGATE_DATA_DIR": str(data_dir), **(extra_env or {})}
    )
    env.pop("OPSGATE_API_KEY", None)
    return Cli(project, data_dir, env)


class GatewayStartError(RuntimeError):
    pass


class GatewayProcess:
    """One running `opsgate serve`. Also a context manager (stops on exit)."""

    def __init__(
        self,
        project_dir: Path,
        *,
        data_dir: Path,
        database_url: str | None = None,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        admin_key: str | None = None,
    ) -> None:
        self.project_dir = Path(project_dir)
        self.data_dir = Path(data_dir)
        self.database_url = database_url
        self.port = port or free_port()
        self.root_url = f"http://127.0.0.1:{self.port}"
        self.base_url = self.root_url + "/v1"
        extra = {"OPSGATE_PROJECT_DIR": str(self.project_dir), "OPSGATE_DATA_DIR": str(self.data_dir)}
        if database_url:
            extra["OPSGATE_DATABASE_URL"] = database_url
        extra.update(env or {})
        self.env = subprocess_env(extra)
        self.output_file = self.data_dir.parent / f"{self.data_dir.name}.serve.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.admin_key = admin_key or ""
        self._engine: Any = None
        self._client: openai.OpenAI | None = None

    # -- life cycle ------------------------------------------------------------------------------------

    def start(self) -> GatewayProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output_file, "ab") as out:
            self.process = subprocess.Popen(
                [OPSGATE, "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=self.project_dir,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_ready()
        self.admin_key = self._admin_key()
        return self

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        with httpx.Client(trust_env=False, verify=False, timeout=2) as http:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise GatewayStartError(
                        f"opsgate serve exited with {self.process.returncode}:\n{self.output()}"
                    )
                try:
                    if http.get(self.root_url + "/readyz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        self.stop()
        raise GatewayStartError(f"opsgate serve was not ready within {START_TIMEOUT_S} s:\n{self.output()}")

    def _admin_key(self) -> str:
        key_file = self.data_dir / "admin.key"
        if key_file.exists():
            return key_file.read_text(encoding="utf-8").strip()
        if self.admin_key:  # given by the caller: an admin key of the database this gateway shares
            return self.admin_key
        # The database already had keys (a shared database): make an admin key for this handle.
        value = "sk-test-admin-" + secrets.token_hex(16)
        # as the operator on the box: the handle has write access to its data directory
        self.cli("keys", "create", "--name", "test-admin", "--role", "admin", "--key", value, "--local-admin")
        return value

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM and wait: the gateway flushes its request log on the way out. Returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        if self._client is not None:
            self._client.close()
            self._client = None
        return self.process.returncode

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def output(self) -> str:
        try:
            return self.output_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> GatewayProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- clients ---------------------------------------------------------------------------------------

    def client(self, **kw: Any) -> openai.OpenAI:
        """The official sync client on this gateway (admin key, no client-side retries); shared when no
        options are given."""
        if kw:
            return self._new_client(**kw)
        if self._client is None:
            self._client = self._new_client()
        return self._client

    def _new_client(self, **kw: Any) -> openai.OpenAI:
        kw.setdefault("api_key", self.admin_key)
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 30)
        # plain http to 127.0.0.1: skipping the CA bundle makes a client ~15x cheaper to build
        return openai.OpenAI(base_url=self.base_url, http_client=httpx2.Client(verify=False), **kw)

    def async_client(self, **kw: Any) -> openai.AsyncOpenAI:
        kw.setdefault("api_key", self.admin_key)
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 30)
        return openai.AsyncOpenAI(base_url=self.base_url, http_client=httpx2.AsyncClient(verify=False), **kw)

    def http(self, **kw: Any) -> httpx.Client:
        """A raw HTTP client on the root URL (for bodies the openai client cannot send)."""
        kw.setdefault("timeout", 30)
        return httpx.Client(base_url=self.root_url, trust_env=False, verify=False, **kw)

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.admin_key}"}

    def wait_for_key(self, key: str, *, valid: bool = True, timeout: float = 5) -> float:
        """Seconds until the running gateway accepts (or, valid=False, refuses) this key."""
        started = time.monotonic()
        with self.http() as http:
            while True:
                status = http.get("/v1/models", headers=self.auth(key)).status_code
                if (status == 200) == valid:
                    return time.monotonic() - started
                assert time.monotonic() - started < timeout, f"key still answers {status} after {timeout} s"
                time.sleep(0.02)

    def metrics(self) -> str:
        with self.http() as http:
            r = http.get("/metrics", headers=self.auth())
            assert r.status_code == 200, r.text
            return r.text

    # -- CLI and request log -----------------------------------------------------------------------------

    def cli(self, *args: str, key: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = dict(self.env)
        env.pop("OPSGATE_API_KEY", None)
        if key is not None:
            env["OPSGATE_API_KEY"] = key
        result = subprocess.run(
            [OPSGATE, *args],
            cwd=self.project_dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"opsgate {' '.join(args)} exited {result.returncode}\nstdout: {result.stdout}\n"
                f"stderr: {result.stderr}"
            )
        return result

    def logs(self, *args: str, limit: int = 100_000) -> list[dict[str, Any]]:
        """Rows of `opsgate logs query --json` (newest first); extra args are passed on."""
        out = self.cli("logs", "query", "--json", "--limit", str(limit), *args).stdout
        return [orjson.loads(line) for line in out.splitlines() if line.strip()]

    def log_rows(self, ids: Iterable[str], *, timeout: float = 10) -> dict[str, dict[str, Any]]:
        """The log rows of these request ids, read from the database, waiting until all are written."""
        from sqlalchemy import select
        from sqlalchemy.orm import Session

        from gateway.db.models import RequestLog

        wanted = set(ids)
        engine = self._db()
        deadline = time.monotonic() + timeout
        while True:
            with Session(engine) as session:
                rows = session.scalars(select(RequestLog).where(RequestLog.id.in_(wanted))).all()
                found = {
                    r.id: {c.name: getattr(r, c.key) for c in RequestLog.__table__.columns} for r in rows
                }
            if set(found) >= wanted or time.monotonic() > deadline:
                missing = wanted - set(found)
                assert not missing, f"no log row within {timeout} s for {sorted(missing)}"
                return found
            time.sleep(0.05)

    def log_row(self, request_id: str, *, timeout: float = 10) -> dict[str, Any]:
        return self.log_rows([request_id], timeout=timeout)[request_id]

    def count_rows(self, request_id: str) -> int:
        from sqlalchemy import func, select
        from sqlalchemy.orm import Session

        from gateway.db.models import RequestLog

        with Session(self._db()) as session:
            return int(session.scalar(select(func.count()).where(RequestLog.id == request_id)) or 0)

    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'opsgate.db'}"

    def _db(self) -> Any:
        if self._engine is None:
            from sqlalchemy import create_engine
            from sqlalchemy.engine import make_url

            url = make_url(self.db_url())
            if url.drivername in ("postgresql", "postgres"):
                url = url.set(drivername="postgresql+psycopg")
            self._engine = create_engine(url)
        return self._engine


def assert_error(
    gw: GatewayProcess,
    r: httpx.Response,
    status: int,
    *,
    type_: str,
    code: str | None,
    param: str | None = None,
) -> dict[str, Any]:
    """Exact status and OpenAI error JSON, no traceback, and exactly one complete log row."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert "Traceback" not in r.text
    assert 'File "' not in r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == type_
    assert error["code"] == code
    assert error["param"] == param
    assert isinstance(error["message"], str)
    assert len(error["message"]) > 10
    request_id = r.headers["x-opsgate-request-id"]
    row = gw.log_row(request_id)
    assert gw.count_rows(request_id) == 1
    assert row["status"] == status
    assert row["error_type"] == (code or type_)
    assert row["error_message"] == error["message"]
    assert row["latency_ms"] is not None
    assert row["latency_ms"] > 0
    assert row["ts"] is not None
    assert row["route"] == r.request.url.path
    return row
