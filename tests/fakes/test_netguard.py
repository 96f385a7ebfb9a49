"""The network guard the suite relies on: only loopback may be reached, here and in subprocesses."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes import netguard
from tests.fakes.gateway import subprocess_env

REACH_OUT = "import socket\ntry:\n    socket.create_connection(('192.0.2.1', 80), timeout=1)\nexcept OSError as e:\n    print(e)\n"


def test_the_test_process_cannot_leave_loopback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "guard.log"
    monkeypatch.setenv(netguard.LOG_ENV, str(log))
    with pytest.raises(ConnectionRefusedError, match=r"only 127\.0\.0\.1"):
        socket.create_connection(("192.0.2.1", 80), timeout=1)
    assert "192.0.2.1" in log.read_text()
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        socket.create_connection(server.getsockname(), timeout=1).close()  # loopback is fine


def test_subprocesses_cannot_leave_loopback(tmp_path: Path) -> None:
    log = tmp_path / "guard.log"
    env = subprocess_env({netguard.LOG_ENV: str(log)})
    result = subprocess.run(
        [sys.executable, "-c", REACH_OUT], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert "only 127.0.0.1" in result.stdout
    assert "192.0.2.1" in log.read_text()


def test_a_private_test_network_can_be_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The netns topology (deploy/topology.sh) lives on a test network of its own: named, it may be reached."""
    monkeypatch.setenv(netguard.LOG_ENV, str(tmp_path / "guard.log"))
    monkeypatch.setenv(netguard.ALLOW_ENV, "10.231.9.0/24, postgres")
    netguard.check(("10.231.9.5", 5432))
    netguard.check(("postgres", 5432))
    for outside in ("10.231.10.5", "192.0.2.1", "postgres.example.com"):
        with pytest.raises(ConnectionRefusedError):
            netguard.check((outside, 5432))
