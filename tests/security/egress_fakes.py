"""Parts of the egress attacks: a loopback "attacker" that records whatever reaches it, a fake Anthropic API
the operator allows (so requests take litellm's Anthropic path for real), canary secrets, and the project.

The attacker listens on a port no test project allows; a test passes only if it never received a request
and no canary appears in any response, log row or the gateway's own output.
"""

from __future__ import annotations

import secrets
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.registry.files import ArtifactFile
from gateway.registry.hashing import content_hash
from gateway.registry.store import SourceInfo
from gateway.registry.sync import register_artifact
from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import GatewayProcess
from tests.fakes.upstream import FakeUpstream

CANARY_ANTHROPIC = "sk-canary-anthropic-" + secrets.token_hex(8)
CANARY_OPENAI = "sk-canary-openai-" + secrets.token_hex(8)
CANARY_DB = "postgresql://opsgate:sk-canary-db-" + secrets.token_hex(8) + "@db.internal/opsgate"
CANARY_OPSGATE = "sk-canary-opsgate-" + secrets.token_hex(8)
CANARY_ENV = {
    "ANTHROPIC_API_KEY": CANARY_ANTHROPIC,
    "OPENAI_API_KEY": CANARY_OPENAI,
    "DATABASE_URL": CANARY_DB,  # a database password: matches no allowed pattern
    "OPSGATE_TEST_CANARY_TOKEN": CANARY_OPSGATE,  # the gateway's own prefix: never a router's to name
}
CANARIES = (CANARY_ANTHROPIC, CANARY_OPENAI, CANARY_DB, CANARY_OPSGATE)
MESSAGES = [{"role": "user", "content": "hello there"}]


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Listener:
    """A loopback HTTP server recording every request. `anthropic=True` answers like Anthropic's Messages
    API (JSON, or SSE when the body asks to stream); paths under /redirect/ answer 307 to `redirect_to`."""

    anthropic: bool = False
    redirect_to: str = ""
    received: list[Received] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Listener:
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                listener.received.append(Received(self.command, self.path, dict(self.headers.items()), body))
                listener.answer(self, body)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

            def log_message(self, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def answer(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        if handler.path.startswith("/redirect/") and self.redirect_to:
            handler.send_response(307)
            handler.send_header("Location", self.redirect_to + handler.path.removeprefix("/redirect"))
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        request = orjson.loads(body) if body.startswith(b"{") else {}
        if self.anthropic and request.get("stream"):
            _send(handler, _anthropic_stream(), "text/event-stream")
        elif self.anthropic:
            _send(handler, orjson.dumps(_anthropic_message()), "application/json")
        else:  # whatever a client would accept as success: the attack "works" if anything arrives
            _send(handler, orjson.dumps({"ok": True, "leaked": True}), "application/json")

    def headers_seen(self) -> list[dict[str, str]]:
        return [{k.lower(): v for k, v in r.headers.items()} for r in self.received]


def _send(handler: BaseHTTPRequestHandler, data: bytes, content_type: str) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def _anthropic_message() -> dict[str, Any]:
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [{"type": "text", "text": "hello from fake anthropic"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 5, "output_tokens": 4},
    }


def _anthropic_stream() -> bytes:
    start = {**_anthropic_message(), "content": [], "stop_reason": None}
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": start}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hello from"}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " fake anthropic"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 4}}),
        ("message_stop", {"type": "message_stop"}),
    ]  # fmt: skip
    return b"".join(f"event: {name}\ndata: ".encode() + orjson.dumps(data) + b"\n\n" for name, data in events)


@pytest.fixture(scope="module")
def attacker() -> Iterator[Listener]:
    listener = Listener().start()
    yield listener
    listener.stop()


@pytest.fixture(scope="module")
def fake_anthropic(attacker: Listener) -> Iterator[Listener]:
    """An Anthropic endpoint the operator allows; its /redirect/ paths send clients on to the attacker."""
    listener = Listener(anthropic=True, redirect_to=attacker.url).start()
    yield listener
    listener.stop()


def gateway_yaml(*allowed: Listener | FakeUpstream, extra: str = "") -> str:
    """A project's config/gateway.yaml allowing only these loopback listeners (never the attacker)."""
    hosts = ", ".join(f"'127.0.0.1:{_port(a)}'" for a in allowed)
    return (
        "request_log:\n  flush_interval_s: 0.02\ncache:\n  refresh_interval_s: 0.2\n"
        f"egress:\n  hosts: [{hosts}]\n{extra}"
    )


def _port(allowed: Listener | FakeUpstream) -> int:
    return allowed.port


def routers(fake_anthropic: Listener, fake_upstream: FakeUpstream) -> dict[str, Any]:
    """Legitimate routers: Anthropic through litellm (at its default address, and at the fake), an
    OpenAI-compatible upstream direct and through litellm, embeddings both ways."""

    def openai_like(dep_id: str, adapter: str, kind: str = "chat") -> dict[str, Any]:
        dep = {"id": dep_id, "model": "openai/fake", "api_base": fake_upstream.url(f"ok-sec-{dep_id}")}
        return {"kind": kind, "deployments": [{**dep, "adapter": adapter, "api_key_env": "OPENAI_API_KEY"}]}

    return {
        # the finding's router: Anthropic through litellm at its default address (a legitimate call would
        # leave the machine; the attacks below are refused before any call)
        "claude-default": {
            "deployments": [
                {"id": "anthropic", "model": "anthropic/claude-x", "api_key_env": "ANTHROPIC_API_KEY"}
            ]
        },
        "claude": {
            "deployments": [
                {
                    "id": "anthropic",
                    "model": "anthropic/claude-x",
                    "api_base": fake_anthropic.url,
                    "api_key_env": "ANTHROPIC_API_KEY",
                }
            ]
        },
        "direct": openai_like("direct", "openai"),
        "viallm": openai_like("viallm", "litellm"),
        "vectors": openai_like("vectors", "openai", "embedding"),
        "vectorsllm": openai_like("vectorsllm", "litellm", "embedding"),
    }


@pytest.fixture(scope="module")
def egress_gateway(
    project_factory: ProjectFactory,
    gateway_factory: GatewayFactory,
    fake_upstream: FakeUpstream,
    fake_anthropic: Listener,
    attacker: Listener,
) -> Iterator[GatewayProcess]:
    """A gateway whose operator allows the fake Anthropic and the fake upstream, not the attacker; the
    canary secrets are in its environment."""
    project = project_factory(
        routers=routers(fake_anthropic, fake_upstream),
        files={"config/gateway.yaml": gateway_yaml(fake_anthropic, fake_upstream)},
    )
    with gateway_factory(project, env=CANARY_ENV) as gateway:
        yield gateway


def assert_no_leak(gw: GatewayProcess, attacker: Listener, *texts: str) -> None:
    """The attacker saw nothing, and no canary is in the responses given, the log rows or the output."""
    assert attacker.received == [], [(r.method, r.path, r.headers) for r in attacker.received]
    rows = orjson.dumps(gw.logs(limit=1000)).decode()
    for canary in CANARIES:
        for text in texts:
            assert canary not in text
        assert canary not in rows
        assert canary not in gw.output()


def git_commit_all(project: Path, message: str) -> None:
    env = {"GIT_AUTHOR_NAME": "pe", "GIT_AUTHOR_EMAIL": "pe@example.org", "GIT_COMMITTER_NAME": "pe",
           "GIT_COMMITTER_EMAIL": "pe@example.org", "PATH": "/usr/bin:/bin"}  # fmt: skip
    if not (project / ".git").exists():
        (project / ".gitignore").write_text(".opsgate/\n", encoding="utf-8")
        subprocess.run(["git", "init", "-q", "-b", "main"], cwd=project, check=True, env=env)
    subprocess.run(["git", "add", "-A"], cwd=project, check=True, env=env)
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", message], cwd=project, check=True, env=env)


def register_unchecked(gw: GatewayProcess, kind: str, spec: Any) -> None:
    """Register a spec the way an opsgate without these checks did (a version synced before them), as
    the production version of a new name: the gateway must still refuse what it names."""
    from sqlalchemy import create_engine

    art = ArtifactFile(kind, spec.name, f"{kind}s/{spec.name}.yaml", spec, content_hash(spec, {}))
    engine = create_engine(gw.db_url())
    try:
        register_artifact(
            engine,
            art,
            SourceInfo(path=art.path, dirty=True),
            actor="test:old-sync",
            bootstrap_alias="production",
        )
    finally:
        engine.dispose()


def git_gateway(
    project_factory: ProjectFactory,
    gateway_factory: GatewayFactory,
    routers: dict[str, Any],
    config: str,
) -> GatewayProcess:
    """A gateway on a git project (so `opsgate sync` works), canaries in its environment."""
    project = project_factory(routers=routers, files={"config/gateway.yaml": config})
    git_commit_all(project, "project")
    return gateway_factory(project, env=CANARY_ENV)


def sync(gw: GatewayProcess, files: dict[str, str], message: str) -> subprocess.CompletedProcess[str]:
    """Commit these files (text, or "" to delete) and run `opsgate sync` as the admin."""
    for rel, text in files.items():
        path = gw.project_dir / rel
        if text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        else:
            path.unlink()
    git_commit_all(gw.project_dir, message)
    return gw.cli("sync", key=gw.admin_key, check=False)


def line_of(text: str, needle: str) -> int:
    """1-based line of the first line holding `needle`."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.fixture(scope="module")
def app_key(egress_gateway: GatewayProcess) -> str:
    """An application key: the untrusted caller of the attacks."""
    made = egress_gateway.cli(
        "keys", "create", "--name", "attacker-app", "--role", "app", key=egress_gateway.admin_key
    )
    key = made.stdout.strip().splitlines()[-1]
    egress_gateway.wait_for_key(key)
    return key
