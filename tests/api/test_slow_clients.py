"""Issue 13, slow clients: a client that sends its head or body slowly, sends huge headers, or never reads
its stream, holds no worker and no memory beyond the documented bounds (docs/operations.md "Slow clients").

Raw sockets against the real server, with short bounds: `server.header_timeout_s: 1`,
`server.max_header_bytes: 8192`, `server.body_timeout_s: 1`, `server.send_timeout_s: 1`.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import orjson
import psutil
import pytest

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import FAST_GATEWAY_YAML, GatewayProcess, deployment
from tests.fakes.upstream import FakeUpstream

SLOW_YAML = FAST_GATEWAY_YAML + (
    "server:\n  header_timeout_s: 1\n  max_header_bytes: 8192\n  body_timeout_s: 1\n  send_timeout_s: 1\n"
)


@pytest.fixture(scope="module")
def gw(
    project_factory: ProjectFactory, gateway_factory: GatewayFactory, fake_upstream: FakeUpstream
) -> Iterator[GatewayProcess]:
    routers = {"long": {"deployments": [deployment("echo", fake_upstream.url("ok-slowreader"))]}}
    project = project_factory(routers=routers, files={"config/gateway.yaml": SLOW_YAML})
    with gateway_factory(project) as gateway:
        yield gateway


def connect(gw: GatewayProcess, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", gw.port))
    sock.settimeout(10)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection (fails if it does not within the timeout)."""
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def error_of(answer: bytes) -> dict[str, object]:
    error: dict[str, object] = orjson.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
    return error


def test_slow_loris_head_gets_408_and_is_closed(gw: GatewayProcess) -> None:
    sock = connect(gw)
    started = time.monotonic()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
    answer = b""
    for i in range(40):  # a header byte every 0.1 s: the head never completes in time
        try:
            sock.sendall(b"X-Slow-%d: y\r\n" % i)
        except OSError:
            break
        time.sleep(0.1)
        sock.setblocking(False)
        try:
            answer += sock.recv(65536)
        except BlockingIOError:
            pass
        finally:
            sock.setblocking(True)
        if answer:
            break
    sock.settimeout(5)
    with contextlib.suppress(ConnectionResetError):
        answer += read_all(sock)
    elapsed = time.monotonic() - started
    assert status_of(answer) == 408, answer[:200]
    assert error_of(answer)["code"] == "header_timeout"
    assert 0.8 < elapsed < 3


def test_idle_connection_is_closed(gw: GatewayProcess) -> None:
    sock = connect(gw)
    started = time.monotonic()
    answer = read_all(sock)
    assert time.monotonic() - started < 3
    assert answer == b"" or status_of(answer) == 408


@pytest.mark.parametrize("size", [9000, 200_000])
def test_oversized_headers_get_431(gw: GatewayProcess, size: int) -> None:
    sock = connect(gw)
    head = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size + b"\r\n\r\n"
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(head)
    answer = read_all(sock)
    assert status_of(answer) == 431, answer[:200]
    assert error_of(answer)["code"] == "headers_too_large"
    with gw.http() as http:  # and nothing else is affected
        assert http.get("/v1/models", headers=gw.auth()).status_code == 200


def test_slow_loris_body_gets_408_logged_and_closed(gw: GatewayProcess) -> None:
    sock = connect(gw)
    body = orjson.dumps({"model": "long", "messages": [{"role": "user", "content": "hi " * 100}]})
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {gw.admin_key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body[:10]
    )
    started = time.monotonic()
    answer = b""
    for byte in body[10:60]:
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            break
        time.sleep(0.1)
    sock.settimeout(5)
    answer = read_all(sock)
    assert time.monotonic() - started < 6
    assert status_of(answer) == 408, answer[:300]
    assert error_of(answer)["code"] == "body_timeout"
    request_id = next(
        line.split(b": ", 1)[1].decode()
        for line in answer.split(b"\r\n")
        if line.lower().startswith(b"x-opsgate-request-id")
    )
    row = gw.log_row(request_id)
    assert row["status"] == 408 and row["error_type"] == "body_timeout"
    assert gw.count_rows(request_id) == 1


def test_a_reader_that_never_drains_is_cut_and_logged(gw: GatewayProcess) -> None:
    words = "word " * 150_000  # the fake upstream streams one chunk per word: ~30 MB of SSE
    body = orjson.dumps({"model": "long", "stream": True, "messages": [{"role": "user", "content": words}]})
    gateway = psutil.Process(gw.process.pid)  # type: ignore[union-attr]
    rss_before = gateway.memory_info().rss
    sock = connect(gw, rcvbuf=4096)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {gw.admin_key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1024)
    request_id = next(
        line.split(b": ", 1)[1].decode()
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"x-opsgate-request-id")
    )
    assert status_of(head) == 200
    # never read again: the gateway must give up on this reader within send_timeout_s (+ a margin)
    row = gw.log_row(request_id, timeout=15)
    assert row["status"] == 408, row
    assert row["error_type"] == "client_too_slow"
    assert gw.count_rows(request_id) == 1
    growth = gateway.memory_info().rss - rss_before
    assert growth < 64 * 1024 * 1024, f"the gateway grew {growth / 1e6:.0f} MB for one stuck reader"
    sock.settimeout(5)
    try:
        rest = read_all(sock)  # the connection was closed by the server
    except ConnectionResetError:
        rest = b""
    assert b"data: [DONE]" not in rest
    with gw.http() as http:
        assert http.get("/healthz").status_code == 200
