"""Rollouts on the real server with the fake upstream: a candidate router version pointed at a failing
upstream is rolled back by the background evaluator with the evidence in the audit log; an equal one
keeps serving. Requests come from the official openai client, each with an OpenAI `user` id."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
import yaml

from tests.fakes.gateway import FAST_GATEWAY_YAML, GatewayProcess, commit_project, deployment
from tests.fakes.upstream import FakeUpstream

GATEWAY_YAML = FAST_GATEWAY_YAML + "rollouts:\n  check_interval_s: 0.3\n"


class Hooks(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append({"event": self.headers.get("x-opsgate-event"), "body": orjson.loads(body)})
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture(scope="module")
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hooks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", Hooks.received
    server.shutdown()


USERS = [f"user-{i}" for i in range(100)]


def _router(name: str, url: str, description: str) -> str:
    spec = {"name": name, "description": description, "deployments": [deployment("up", url)]}
    return yaml.safe_dump(spec, sort_keys=False)


@pytest.fixture(scope="module")
def gw(
    project_factory: Callable[..., Path],
    gateway_factory: Callable[..., GatewayProcess],
    fake_upstream: FakeUpstream,
    webhook: tuple[str, list[dict[str, Any]]],
) -> Iterator[tuple[GatewayProcess, dict[str, str]]]:
    """Routers `worse` and `same` at version 1 (healthy upstream) in production; version 2 of `worse`
    calls an upstream that always fails, version 2 of `same` the healthy one."""
    ok = fake_upstream.url("ok")
    root = project_factory(
        routers={"worse": _router("worse", ok, "v1"), "same": _router("same", ok, "v1")},
        files={
            "config/gateway.yaml": GATEWAY_YAML
            + f"alerts:\n  webhooks:\n    - {{url: '{webhook[0]}', events: [rollout.rolled_back, rollout.promoted], retries: 0}}\n"
        },
    )
    gw = gateway_factory(root)
    (root / "config/routers/worse.yaml").write_text(_router("worse", fake_upstream.url("500-cand"), "v2"))
    (root / "config/routers/same.yaml").write_text(_router("same", ok, "v2"))
    commit_project(root, "candidates")
    out = gw.cli("sync", key=gw.admin_key).stdout
    assert "router:worse@2" in out and "router:same@2" in out
    # the engineer starts rollouts; an approver someone else (the root admin) created approves them
    engineer = _new_key(gw, "engineer", "engineer@example.com", ["prompt-engineer"])
    approver = _new_key(gw, "approver", "approver@example.com", ["approver"])
    with gw:
        yield gw, {"engineer": engineer, "approver": approver}


def _new_key(gw: GatewayProcess, name: str, principal: str, roles: list[str]) -> str:
    with gw.http() as http:
        r = http.post(
            "/admin/keys", json={"name": name, "principal": principal, "roles": roles}, headers=gw.auth()
        )
    assert r.status_code == 201, r.text
    value: str = r.json()["key"]
    gw.wait_for_key(value)
    return value


def _start(gw: GatewayProcess, keys: dict[str, str], name: str) -> dict[str, Any]:
    body = {
        "kind": "router",
        "name": name,
        "alias": "production",
        "candidate": 2,
        "share": 0.5,
        "min_sample": 20,
        "interval_s": 0.5,
        "metrics": [{"metric": "error_rate"}],
    }
    with gw.http() as http:
        r = http.post("/admin/rollouts", json=body, headers=gw.auth(keys["engineer"]))
        assert r.status_code == 201, r.text
        started = r.json()
        # production is protected: the rollout is a promotion, approved by someone else (four-eyes)
        assert started["state"] == "awaiting_approval"
        own = http.post(
            f"/admin/promotions/{started['promotion_id']}/approve", json={}, headers=gw.auth(keys["engineer"])
        )
        assert own.status_code == 403, own.text
        ok = http.post(
            f"/admin/promotions/{started['promotion_id']}/approve", json={}, headers=gw.auth(keys["approver"])
        )
        assert ok.status_code == 200, ok.text
    return started


def _status(gw: GatewayProcess, rollout_id: str) -> dict[str, Any]:
    with gw.http() as http:
        r = http.get(f"/admin/rollouts/{rollout_id}", headers=gw.auth())
        assert r.status_code == 200, r.text
        return dict(r.json())


def _wait(gw: GatewayProcess, rollout_id: str, states: set[str], timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = _status(gw, rollout_id)
        if status["state"] in states:
            return status
        time.sleep(0.1)
    raise AssertionError(f"rollout {rollout_id} still {status['state']}: {status}")


def _traffic(gw: GatewayProcess, model: str) -> dict[str, list[str]]:
    """One request per user; the versions that served each user, from the response header."""
    client = gw.client()
    served: dict[str, list[str]] = {}
    for user in USERS:
        try:
            raw = client.chat.completions.with_raw_response.create(
                model=model, messages=[{"role": "user", "content": "hi"}], user=user
            )
            served.setdefault(user, []).append(raw.headers["x-opsgate-versions"].split("#")[0])
        except openai.APIStatusError as exc:
            assert exc.status_code >= 500, exc
            versions = exc.response.headers.get("x-opsgate-versions", "error")
            served.setdefault(user, []).append(versions.split("#")[0])
    return served


def test_worse_candidate_is_rolled_back_with_the_evidence(
    gw: tuple[GatewayProcess, dict[str, str]], webhook: tuple[str, list[dict[str, Any]]]
) -> None:
    gateway, keys = gw
    started = _start(gateway, keys, "worse")
    _wait(gateway, started["id"], {"active"})
    time.sleep(0.6)  # the catalog sees the activation within its refresh interval (0.2 s)
    served = _traffic(gateway, "worse")
    arms = {user: versions[0] for user, versions in served.items()}
    assert 20 <= sum("router:worse@2" in v for v in arms.values()) <= 80  # about half in the canary

    done = _wait(gateway, started["id"], {"rolled_back"})
    [test] = done["last_check"]["tests"]
    assert test["verdict"] == "worse" and test["metric"] == "error_rate"
    assert test["mean_candidate"] == 1.0 and test["mean_control"] == 0.0
    with gateway.http() as http:
        entries = http.get("/admin/audit", params={"limit": 1000}, headers=gateway.auth()).json()
        verified = http.get("/admin/audit/verify", headers=gateway.auth()).json()
    [entry] = [e for e in entries if e["action"] == "rollout.rollback"]
    assert entry["target"] == "router:worse@production" and entry["actor"].startswith("opsgate")
    assert entry["after"]["tests"][0]["n_candidate"] == test["n_candidate"] >= 20
    assert entry["after"]["tests"][0]["p_value"] < 0.05
    assert entry["after"]["alias_version"] == 1
    assert verified["ok"] is True
    deadline = time.monotonic() + 5
    while not webhook[1] and time.monotonic() < deadline:
        time.sleep(0.1)
    [event] = [h for h in webhook[1] if h["body"].get("rollout") == started["id"]]
    assert event["event"] == "rollout.rolled_back" and event["body"]["tests"][0]["verdict"] == "worse"
    # the alias is back on version 1 and every caller is served it once the catalog refreshes
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        again = _traffic(gateway, "worse")
        if all(v == ["router:worse@1"] for v in again.values()):
            break
        time.sleep(0.3)
    assert all(v == ["router:worse@1"] for v in again.values()), sorted(set(map(str, again.values())))


def test_equal_candidate_keeps_serving_sticky_arms_on_the_log(
    gw: tuple[GatewayProcess, dict[str, str]],
) -> None:
    gateway, keys = gw
    started = _start(gateway, keys, "same")
    _wait(gateway, started["id"], {"active"})
    time.sleep(0.6)  # the catalog sees the activation within its refresh interval (0.2 s)
    first = _traffic(gateway, "same")
    second = _traffic(gateway, "same")
    for user in USERS:  # sticky: each user stays in its arm
        assert first[user] == second[user]
    assert {v[0] for v in first.values()} == {"router:same@1", "router:same@2"}
    time.sleep(1.5)  # several evaluation intervals
    status = _status(gateway, started["id"])
    assert status["state"] == "active", status
    assert status["last_check"]["decision"] == "continue"
    assert status["last_check"]["requests"]["candidate"] >= 20
    rows = gateway.logs()
    tagged = [r for r in rows if (r.get("extra") or {}).get("rollout", {}).get("id") == started["id"]]
    assert len(tagged) == 2 * len(USERS)
    assert {r["extra"]["rollout"]["arm"] for r in tagged} == {"control", "candidate"}
    for r in tagged:
        arm = r["extra"]["rollout"]["arm"]
        want = "router:same@2" if arm == "candidate" else "router:same@1"
        assert any(str(a).split("#")[0] == want for a in r["artifacts"]), r["artifacts"]
    with gateway.http() as http:
        r = http.post(
            f"/admin/rollouts/{started['id']}/stop", json={"reason": "done"}, headers=gateway.auth()
        )
        assert r.status_code == 200 and r.json()["state"] == "stopped"
        bad = http.post(
            "/admin/rollouts", json={"kind": "router", "name": "same", "candidate": 2, "share": 3}
        )
        assert bad.status_code in (401, 422)


def test_cli_start_status_stop(gw: tuple[GatewayProcess, dict[str, str]]) -> None:
    gateway, keys = gw
    done = gateway.cli(
        "rollout", "start", "router:same@2", "--share", "0.3", "--step", "600:0.6", "--min-sample", "30",
        key=keys["engineer"],
    )  # fmt: skip
    rollout_id = done.stdout.strip().splitlines()[-1]
    assert rollout_id.startswith("rol_") and "awaiting_approval" in done.stderr
    promotion = _status(gateway, rollout_id)["promotion_id"]
    gateway.cli("approve", promotion, key=keys["approver"])
    gateway.cli("rollout", "check", rollout_id)
    shown = gateway.cli("rollout", "status", rollout_id).stdout
    assert "router:same@production  1 -> 2  share 30%  active" in shown
    live = gateway.cli("rollout", "status", "--live", "--json").stdout.splitlines()
    assert [orjson.loads(line)["id"] for line in live] == [rollout_id]
    bad = gateway.cli("rollout", "start", "router:same", key=gateway.admin_key, check=False)
    assert bad.returncode == 2 and "KIND:NAME@VERSION" in bad.stderr
    taken = gateway.cli("rollout", "start", "router:same@2", key=keys["engineer"], check=False)
    assert taken.returncode == 1 and "already live" in taken.stderr
    stopped = gateway.cli(
        "rollout", "stop", rollout_id, "--reason", "demo over", key=gateway.admin_key
    ).stdout
    assert "stopped" in stopped
    with gateway.http() as http:
        entries = http.get("/admin/audit", params={"limit": 1000}, headers=gateway.auth()).json()
    stops = [e for e in entries if e["action"] == "rollout.stop" and e["after"]["rollout"] == rollout_id]
    assert stops[0]["reason"] == "demo over" and stops[0]["after"]["alias_version"] == 1
    shadow = (
        gateway.cli(
            "rollout", "start", "router:same@2", "--mode", "shadow", "--share", "0.5", key=keys["engineer"]
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    assert "share 50% shadow  awaiting_approval" in gateway.cli("rollout", "status", shadow).stdout
    gateway.cli("rollout", "stop", shadow, "--reason", "demo over", key=gateway.admin_key)


def test_bad_rollout_requests_get_clear_errors(gw: tuple[GatewayProcess, dict[str, str]]) -> None:
    gateway, keys = gw
    app = _new_key(gateway, "app", "checkout-service", ["app"])
    base = {"kind": "router", "name": "worse", "candidate": 2}
    cases = [
        (base | {"share": 3}, keys["engineer"], 422, "share"),
        (base | {"mode": "mirror"}, keys["engineer"], 422, "mode"),
        (base | {"alias": "latest"}, keys["engineer"], 400, "latest"),
        (base | {"candidate": 99}, keys["engineer"], 404, "worse@99"),
        (base | {"name": "nope"}, keys["engineer"], 409, "does not exist"),
        (base | {"bogus": 1}, keys["engineer"], 422, "bogus"),
        (base, app, 403, "role"),
    ]
    with gateway.http() as http:
        before = http.get("/admin/rollouts", headers=gateway.auth()).json()
        for body, key, status, text in cases:
            r = http.post("/admin/rollouts", json=body, headers=gateway.auth(key))
            assert r.status_code == status, (body, r.text)
            assert text in r.json()["error"]["message"], (body, r.text)
        assert http.get("/admin/rollouts/rol_missing", headers=gateway.auth()).status_code == 404
        assert http.get("/admin/rollouts", headers=gateway.auth()).json() == before  # no partial writes
