"""The `opsgate` command against a running gateway: keys (create, import, list, revoke) and the log.

Keys are stored hashed: their plaintext is never in the database files, the logs or command output.
"""

from __future__ import annotations

import hashlib
import json
import stat
import time
from pathlib import Path

import pytest

from tests.fakes.gateway import GatewayProcess

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def gw(spine_gateway: GatewayProcess) -> GatewayProcess:
    # the repo's key refresh interval (0.5 s): key changes must reach a gateway within it
    return spine_gateway


def create_key(gw: GatewayProcess, *args: str) -> str:
    result = gw.cli("keys", "create", *args, key=gw.admin_key)
    key = result.stdout.rstrip("\n").splitlines()[-1]
    assert key == key.strip()
    assert " " not in key
    return key


def status_with(gw: GatewayProcess, key: str, model: str = "default") -> int:
    with gw.http() as http:
        r = http.post(
            "/v1/chat/completions", json={"model": model, "messages": MESSAGES}, headers=gw.auth(key)
        )
    return r.status_code


def test_first_start_creates_an_owner_only_admin_key(gw: GatewayProcess) -> None:
    key_file = gw.data_dir / "admin.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text().strip() == gw.admin_key
    assert gw.admin_key.startswith("sk-og-")
    assert f"created an admin key in {key_file}" in gw.output()
    assert status_with(gw, gw.admin_key) == 200


def test_create_prints_the_key_alone_on_its_last_line(gw: GatewayProcess) -> None:
    result = gw.cli("keys", "create", "--name", "checkout", "--role", "app", key=gw.admin_key)
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    key = lines[-1]
    assert key.startswith("sk-og-")
    assert len(key) > 30
    assert "created key_" in result.stderr
    assert key not in result.stderr
    gw.wait_for_key(key)
    assert status_with(gw, key) == 200


def test_imported_keys_work(gw: GatewayProcess) -> None:
    value = "legacy-gateway-key-0123456789"
    assert create_key(gw, "--name", "migrated", "--role", "app", "--key", value) == value
    waited = gw.wait_for_key(value)
    assert waited < 1.5
    assert status_with(gw, value) == 200
    again = gw.cli(
        "keys", "create", "--name", "twice", "--role", "app", "--key", value, key=gw.admin_key, check=False
    )
    assert again.returncode == 1
    assert "already registered" in again.stderr
    short = gw.cli(
        "keys", "create", "--name", "short", "--role", "app", "--key", "abc", key=gw.admin_key, check=False
    )
    assert short.returncode == 1
    assert "at least 16 characters" in short.stderr


def test_unknown_role_is_refused(gw: GatewayProcess) -> None:
    result = gw.cli("keys", "create", "--name", "x", "--role", "superuser", key=gw.admin_key, check=False)
    assert result.returncode == 1
    assert "unknown role 'superuser'" in result.stderr
    assert "app, prompt-engineer, approver, admin" in result.stderr


def test_allow_list_limits_what_a_key_may_call(gw: GatewayProcess) -> None:
    key = create_key(gw, "--name", "narrow", "--role", "app", "--allow", "router:other")
    gw.wait_for_key(key)
    assert status_with(gw, key, "other") == 200
    assert status_with(gw, key, "default") == 403


def test_list_and_revoke_need_an_admin_key(gw: GatewayProcess) -> None:
    app_key = create_key(gw, "--name", "plain-app", "--role", "app")
    anonymous = gw.cli("keys", "list", check=False)
    assert anonymous.returncode == 1
    assert "needs an API key" in anonymous.stderr
    as_app = gw.cli("keys", "revoke", "key_doesnotexist", key=app_key, check=False)
    assert as_app.returncode == 1
    assert "permission denied" in as_app.stderr
    assert "admin" in as_app.stderr
    bogus = gw.cli("keys", "list", key="sk-og-not-a-key", check=False)
    assert bogus.returncode == 1
    assert "invalid API key" in bogus.stderr


def test_list_shows_keys_never_their_values(gw: GatewayProcess) -> None:
    key = create_key(gw, "--name", "listed", "--role", "app", "--role", "prompt-engineer")
    listing = gw.cli("keys", "list", "--json", key=gw.admin_key).stdout
    rows = [json.loads(line) for line in listing.splitlines()]
    mine = [r for r in rows if r["name"] == "listed"]
    assert len(mine) == 1
    assert mine[0]["roles"] == ["app", "prompt-engineer"]
    assert mine[0]["prefix"] == key[:10]
    assert mine[0]["revoked"] is False
    assert key not in listing
    assert gw.admin_key not in listing
    assert any(r["roles"] == ["admin"] for r in rows)


def test_a_revoked_key_is_refused_by_the_running_gateway_within_a_second(gw: GatewayProcess) -> None:
    key = create_key(gw, "--name", "leaving", "--role", "app")
    gw.wait_for_key(key)
    revoked = gw.cli("keys", "revoke", key[:10], key=gw.admin_key)  # by id or by the listed prefix
    assert revoked.stdout.startswith("revoked key_")
    started = time.monotonic()
    gw.wait_for_key(key, valid=False, timeout=3)
    assert time.monotonic() - started < 1.2  # cache.refresh_interval_s is 0.5 s by default
    assert status_with(gw, key) == 401
    again = gw.cli("keys", "revoke", revoked.stdout.split()[1], key=gw.admin_key, check=False)
    assert again.returncode == 1
    assert "already revoked" in again.stderr


def test_keys_are_stored_hashed_and_never_logged(gw: GatewayProcess) -> None:
    key = create_key(gw, "--name", "secretive", "--role", "app")
    gw.wait_for_key(key)
    with gw.http() as http:
        ok = http.post(
            "/v1/chat/completions", json={"model": "default", "messages": MESSAGES}, headers=gw.auth(key)
        )
    gw.log_row(ok.headers["x-opsgate-request-id"])
    secrets = [key.encode(), gw.admin_key.encode()]
    db_files = list(Path(gw.data_dir).glob("opsgate.db*"))
    assert db_files
    stored = b"".join(p.read_bytes() for p in db_files)
    for secret in secrets:
        assert secret not in stored
    assert hashlib.sha256(key.encode()).hexdigest().encode() in stored
    logs = json.dumps(gw.logs())
    output = gw.output()
    for secret in (key, gw.admin_key):
        assert secret not in logs
        assert secret not in output


def test_logs_tail_without_follow(gw: GatewayProcess) -> None:
    with gw.http() as http:
        ids = [
            http.post(
                "/v1/chat/completions", json={"model": "default", "messages": MESSAGES}, headers=gw.auth()
            ).headers["x-opsgate-request-id"]
            for _ in range(3)
        ]
    gw.log_rows(ids)
    out = gw.cli("logs", "tail", "--no-follow", "-n", "2", "--json").stdout.splitlines()
    assert [json.loads(line)["id"] for line in out] == ids[1:]
