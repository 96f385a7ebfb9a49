"""Streams cut on the bridged surfaces (completions, responses, messages) as on chat (tests/flow): an upstream
that breaks off mid-stream ends the stream with the surface's own error event (completions: a chunk with
finish_reason "error" then the error; responses: `error` then `response.failed`; messages: Anthropic's
`error` event), its attempt is logged failed and the deployment cools down;
SIGTERM cuts streams still open after `server.shutdown_grace_s` the same way, logged 503
`stream_cut_by_server`, never 499."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import FAST_GATEWAY_YAML, GatewayProcess, deployment
from tests.fakes.upstream import FakeUpstream

SURFACES = ["completions", "responses", "messages"]
GRACE_S = 1.0


def body_for(surface: str, model: str, text: str) -> tuple[str, dict[str, Any]]:
    if surface == "chat":
        return "/v1/chat/completions", {
            "model": model,
            "messages": [{"role": "user", "content": text}],
            "stream": True,
        }
    if surface == "completions":
        return "/v1/completions", {"model": model, "prompt": text, "stream": True}
    if surface == "responses":
        return "/v1/responses", {"model": model, "input": text, "stream": True}
    messages = [{"role": "user", "content": text}]
    return "/v1/messages", {"model": model, "max_tokens": 50, "messages": messages, "stream": True}


def parse_events(text: str) -> list[tuple[str | None, Any]]:
    out: list[tuple[str | None, Any]] = []
    event = None
    for line in text.splitlines():
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
            out.append((event, data if data == "[DONE]" else orjson.loads(data)))
            event = None
    return out


def assert_cut_events(surface: str, events: list[tuple[str | None, Any]], status: int) -> None:
    """The surface's own end of a cut stream: its error event and its finish (no clean end)."""
    kinds = [e for e, _ in events]
    if surface == "completions":
        assert events[-1][1] != "[DONE]", events[-3:]
        assert events[-2][1]["choices"][0]["finish_reason"] == "error", events[-3:]
        error = events[-1][1]["error"]
        assert error["type"] == ("upstream_error" if status == 502 else "server_error"), error
    elif surface == "responses":
        assert kinds[-2:] == ["error", "response.failed"], kinds
        failed = events[-1][1]["response"]
        assert failed["status"] == "failed" and failed["error"]["message"], failed
        assert "response.completed" not in kinds
    else:
        assert kinds[-1] == "error" and "message_stop" not in kinds, kinds
        # Anthropic's own end of a failed stream: the error event, no message_delta (its stop reasons
        # have no "error"), no message_stop; the SDK raises on it
        assert events[-1][1]["type"] == "error" and events[-1][1]["error"]["message"]


@pytest.fixture(scope="module")
def gw(
    fake_upstream: FakeUpstream, project_factory: ProjectFactory, gateway_factory: GatewayFactory
) -> Iterator[GatewayProcess]:
    routers = {
        f"cutter-{surface}": {
            "cooldown_s": 60,
            "deployments": [
                deployment("cuts", fake_upstream.url(f"cut-2-{surface}")),
                deployment("steady", fake_upstream.url(f"ok-{surface}")),
            ],
        }
        for surface in SURFACES
    }
    with gateway_factory(project_factory(routers, files={"config/gateway.yaml": FAST_GATEWAY_YAML})) as g:
        yield g


@pytest.mark.parametrize("surface", SURFACES)
def test_a_mid_stream_cut_ends_with_the_surfaces_error_and_cools_the_deployment_down(
    gw: GatewayProcess, surface: str
) -> None:
    ids, texts = [], []
    for _ in range(3):
        path, body = body_for(surface, f"cutter-{surface}", "one two three four five")
        with gw.http(timeout=30) as http, http.stream("POST", path, json=body, headers=gw.auth()) as r:
            assert r.status_code == 200
            texts.append(r.read().decode())
            ids.append(r.headers["x-opsgate-request-id"])
    assert_cut_events(surface, parse_events(texts[0]), 502)
    rows = gw.log_rows(ids)
    first = rows[ids[0]]
    assert (first["status"], first["stream"]) == (502, True), first
    assert first["attempts"][-1]["deployment"] == "cuts" and first["attempts"][-1]["ok"] is False
    for rid in ids[1:]:  # cooling down: the others go to the steady deployment, and end whole
        assert (rows[rid]["status"], rows[rid]["deployment"]) == (200, "steady"), rows[rid]["attempts"]
    for text in texts[1:]:
        kinds = [e for e, _ in parse_events(text)]
        assert kinds[-1] in ("response.completed", "message_stop") or text.endswith("data: [DONE]\n\n")


def read_stream(gw: GatewayProcess, surface: str, out: dict[str, Any]) -> None:
    path, body = body_for(surface, "dripping", "one two three four five six")
    with gw.http(timeout=30) as http, http.stream("POST", path, json=body, headers=gw.auth()) as r:
        out["id"] = r.headers["x-opsgate-request-id"]
        chunks = []
        for piece in r.iter_text():
            chunks.append(piece)
            if "started" not in out and ("text" in piece or "delta" in piece):
                out["started"] = time.monotonic()
        out["text"] = "".join(chunks)


def test_sigterm_cuts_long_streams_on_every_surface_with_their_own_error_event(
    fake_upstream: FakeUpstream, project_factory: ProjectFactory, gateway_factory: GatewayFactory
) -> None:
    routers = {"dripping": {"deployments": [deployment("slow", fake_upstream.url("drip-3000-surfaces"))]}}
    gateway_yaml = f"server:\n  shutdown_grace_s: {GRACE_S}\n" + FAST_GATEWAY_YAML
    gw = gateway_factory(project_factory(routers, files={"config/gateway.yaml": gateway_yaml}))
    streams: dict[str, dict[str, Any]] = {surface: {} for surface in SURFACES}
    readers = [threading.Thread(target=read_stream, args=(gw, s, streams[s])) for s in SURFACES]
    for t in readers:
        t.start()
    deadline = time.monotonic() + 15
    while not all("started" in s for s in streams.values()):
        assert time.monotonic() < deadline, streams
        time.sleep(0.02)
    assert gw.process is not None
    signalled = time.monotonic()
    gw.process.send_signal(signal.SIGTERM)
    for t in readers:
        t.join(timeout=15)
    gw.process.wait(timeout=15)
    assert GRACE_S <= time.monotonic() - signalled < GRACE_S + 5
    for surface, s in streams.items():
        assert_cut_events(surface, parse_events(s["text"]), 503)
    rows = gw.log_rows([s["id"] for s in streams.values()])
    for row in rows.values():
        assert (row["status"], row["error_type"], row["stream"]) == (503, "stream_cut_by_server", True), row


def plain_call(gw: GatewayProcess, surface: str, out: dict[str, Any]) -> None:
    path, body = body_for(surface, "sluggish", "one two three")
    body.pop("stream")
    try:
        with gw.http(timeout=30) as http:
            r = http.post(path, json=body, headers=gw.auth())
            out["status"], out["text"] = r.status_code, r.text
            out["body"], out["id"] = r.json(), r.headers["x-opsgate-request-id"]
            out["retry_after"] = r.headers.get("retry-after")
    except httpx.HTTPError as exc:
        out["error"] = repr(exc)


@pytest.mark.parametrize("surface", ["chat", "messages"])
def test_sigterm_answers_plain_calls_still_running_after_the_grace_period_with_a_503(
    fake_upstream: FakeUpstream,
    project_factory: ProjectFactory,
    gateway_factory: GatewayFactory,
    surface: str,
) -> None:
    """A plain call whose upstream is still working when the grace period is over gets an answer (503,
    retry elsewhere) and a row saying the server cut it, instead of a connection closed under it and a
    row saying the client left (499)."""
    routers = {"sluggish": {"deployments": [deployment("slow", fake_upstream.url(f"slow-8000-{surface}"))]}}
    gateway_yaml = f"server:\n  shutdown_grace_s: {GRACE_S}\n" + FAST_GATEWAY_YAML
    gw = gateway_factory(project_factory(routers, files={"config/gateway.yaml": gateway_yaml}))
    out: dict[str, Any] = {}
    caller = threading.Thread(target=plain_call, args=(gw, surface, out))
    before = fake_upstream.count(f"slow-8000-{surface}")
    caller.start()
    deadline = time.monotonic() + 10
    while fake_upstream.count(f"slow-8000-{surface}") == before:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert gw.process is not None
    signalled = time.monotonic()
    gw.process.send_signal(signal.SIGTERM)
    caller.join(timeout=15)
    gw.process.wait(timeout=15)
    assert time.monotonic() - signalled < GRACE_S + 5
    assert "error" not in out and "body" in out, out
    assert out["status"] == 503 and int(out["retry_after"]) >= 1, out
    message = out["body"]["error"]["message"]
    assert "shutting down" in message, out
    row = gw.log_row(out["id"])
    assert (row["status"], row["error_type"]) == (503, "cut_by_server"), row


def test_sigterm_answers_a_classic_model_call_still_running_after_the_grace_period_with_a_503(
    project_factory: ProjectFactory, gateway_factory: GatewayFactory
) -> None:
    """A classic-model call still running when the grace period is over (here: its body still arriving,
    within `server.body_timeout_s`) is stopped like a model API call: 503 with Retry-After and one row
    saying the server cut it. Before, the ML routes kept their own error handling, which did not know the
    cut: uvicorn cancelled the call, the client read a plain 500 and no row was written."""
    gateway_yaml = f"server:\n  shutdown_grace_s: {GRACE_S}\n" + FAST_GATEWAY_YAML
    gw = gateway_factory(project_factory({}, files={"config/gateway.yaml": gateway_yaml}))
    body = orjson.dumps({"rows": [{"x": 1.0}]})
    head = (
        f"POST /v1/ml/anything/predict HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        f"authorization: {gw.auth()['Authorization']}\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=20) as conn:
        conn.sendall(head + body[:5])  # the rest never comes before the cut
        time.sleep(0.5)  # the route is reading the body
        assert gw.process is not None
        gw.process.send_signal(signal.SIGTERM)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < 10:
            chunk = conn.recv(65536)
            if not chunk:
                break
            answer += chunk
    gw.process.wait(timeout=15)
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 503"), answer
    headers = {
        k.strip().lower(): v.strip()
        for k, _, v in (line.partition(b":") for line in rest.split(b"\r\n\r\n", 1)[0].split(b"\r\n"))
    }
    assert int(headers[b"retry-after"]) >= 1, headers
    row = gw.log_row(headers[b"x-opsgate-request-id"].decode())
    assert (row["status"], row["error_type"]) == (503, "cut_by_server"), row
