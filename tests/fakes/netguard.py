"""Refuse network connections beyond loopback, in the test process and in every process the tests start.

Installed by `tests/conftest.py` in the test process, and through `tests/fakes/site/sitecustomize.py`
(on PYTHONPATH) in the gateway and CLI subprocesses. It wraps `socket.connect` and the event loops'
`sock_connect` / `create_connection` (uvloop connects in C, so its loop class is wrapped too). A refused
attempt raises and is appended to the file named by OPSGATE_TEST_NETGUARD_LOG, which the test session
checks at its end: no test may even try to reach the network.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import traceback
from typing import Any

LOG_ENV = "OPSGATE_TEST_NETGUARD_LOG"
# Private test networks the tests built on this machine, e.g. the netns topology of tests/deploy/
# (deploy/topology.sh): comma-separated networks (10.231.1.0/24) and host names its /etc/hosts maps there.
ALLOW_ENV = "OPSGATE_TEST_NETGUARD_ALLOW"
_installed = False


def _extra_allowed(host: str) -> bool:
    for item in filter(None, (i.strip() for i in os.environ.get(ALLOW_ENV, "").split(","))):
        if host == item:
            return True
        try:
            if ipaddress.ip_address(host.split("%", 1)[0]) in ipaddress.ip_network(item, strict=False):
                return True
        except ValueError:
            continue
    return False


def _allowed(host: Any) -> bool:
    if isinstance(host, bytes):
        host = host.decode()
    if not isinstance(host, str):
        return False
    if host in ("localhost", "") or _extra_allowed(host):
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False  # a name other than localhost: resolving it is already network use


def check(address: Any, family: int | None = None) -> None:
    if family is not None and family not in (socket.AF_INET, socket.AF_INET6):
        return  # unix sockets and the like
    if isinstance(address, tuple) and address and not _allowed(address[0]):
        message = f"opsgate tests: network access to {address!r} is blocked (only 127.0.0.1 is allowed)"
        log = os.environ.get(LOG_ENV)
        if log:
            with open(log, "a", encoding="utf-8") as out:
                out.write(f"pid {os.getpid()}: {message}\n{''.join(traceback.format_stack(limit=12))}\n")
        raise ConnectionRefusedError(message)


def _wrap_socket() -> None:
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def connect(self: socket.socket, address: Any) -> None:
        check(address, self.family)
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        check(address, self.family)
        return real_connect_ex(self, address)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]


def _wrap_loop(cls: Any) -> None:
    real_sock_connect = cls.sock_connect
    real_create_connection = cls.create_connection

    async def sock_connect(self: Any, sock: socket.socket, address: Any) -> Any:
        check(address, sock.family)
        return await real_sock_connect(self, sock, address)

    async def create_connection(self: Any, *args: Any, **kwargs: Any) -> Any:
        host = kwargs.get("host", args[1] if len(args) > 1 else None)
        if host is not None and kwargs.get("sock") is None:
            check((host, kwargs.get("port", args[2] if len(args) > 2 else 0)))
        return await real_create_connection(self, *args, **kwargs)

    cls.sock_connect = sock_connect
    cls.create_connection = create_connection


def install() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    _wrap_socket()
    _wrap_loop(asyncio.BaseEventLoop)
    try:
        import uvloop
    except ImportError:
        return
    _wrap_loop(uvloop.Loop)
