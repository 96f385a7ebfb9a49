"""Alert rules on the real server: a rule over the request log fires once per episode, its notice reaches a
webhook on loopback signed with HMAC, a receiver that fails and recovers gets exactly one notice (retries
with backoff), a recovery sends one resolved notice, and two replicas on one PostgreSQL send one notice per
episode between them. States are on /admin/alerts and `opsgate alerts list`."""

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

from gateway.monitoring.alerts import verify
from tests.fakes.gateway import FAST_GATEWAY_YAML, GatewayProcess, deployment
from tests.fakes.upstream import FakeUpstream

SECRET = "alert-secret-for-tests"


class Receiver:
    """Webhook receivers on 127.0.0.1: `/ok` takes every notice; `/flaky` answers 500 to its first
    `fail_first` requests, then 204. Keeps every request (path, headers, body)."""

    def __init__(self, fail_first: int = 2) -> None:
        self.requests: list[dict[str, Any]] = []
        self.fail_first = fail_first
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hits = [r for r in receiver.requests if r["path"] == self.path]
                failing = self.path == "/flaky" and len(hits) < receiver.fail_first
                receiver.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body, "failed": failing}
                )
                self.send_response(500 if failing else 204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def taken(self, path: str, event: str | None = None) -> list[dict[str, Any]]:
        out = [r for r in self.requests if r["path"] == path and not r["failed"]]
        return [r for r in out if event is None or r["headers"]["X-Opsgate-Event"] == event]

    def wait(self, path: str, event: str, count: int = 1, timeout: float = 15) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.taken(path, event)
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"{path} {event}: {len(self.taken(path, event))} notice(s); got {self.requests}")


def alerts_yaml(receiver: Receiver) -> str:
    return f"""evaluate_every_s: 0.2
receivers:
  oncall: {{url: "{receiver.url}/ok", secret_env: ALERT_HMAC_SECRET, retries: 0}}
  flaky: {{url: "{receiver.url}/flaky", secret_env: ALERT_HMAC_SECRET, retries: 5, backoff_s: 0.2}}
rules:
  - name: broken-errors
    description: the broken router answers errors
    metric: error_rate
    artifact: router:broken
    window: 1m
    op: ">"
    threshold: 0.5
    min_samples: 3
    severity: critical
    receivers: [oncall, flaky]
  - name: errors-overall
    metric: error_rate
    errors: any
    window: 1m
    threshold: 0.5
    min_samples: 3
    for: 1h
    receivers: [oncall]
  - name: latency
    metric: latency_ms
    percentile: 99
    artifact: router:healthy
    window: 1m
    threshold: 60000
"""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


@pytest.fixture
def project(project_factory: Callable[..., Path], fake_upstream: FakeUpstream, receiver: Receiver) -> Path:
    routers = {
        "broken": {"deployments": [deployment("up", fake_upstream.url("500-alerts"))]},
        "healthy": {"deployments": [deployment("up", fake_upstream.url("ok"))]},
    }
    return project_factory(
        routers=routers,
        files={"config/gateway.yaml": FAST_GATEWAY_YAML, "config/alerts.yaml": alerts_yaml(receiver)},
    )


ENV = {"ALERT_HMAC_SECRET": SECRET}


def _call(gw: GatewayProcess, model: str, n: int) -> None:
    client = gw.client(max_retries=0)
    for _ in range(n):
        try:
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        except openai.APIStatusError as exc:
            assert model == "broken" and exc.status_code == 502, exc


def _states(gw: GatewayProcess) -> dict[str, dict[str, Any]]:
    with gw.http() as http:
        r = http.get("/admin/alerts", headers=gw.auth())
    assert r.status_code == 200, r.text
    return {rule["name"]: rule for rule in r.json()["rules"]}


def _wait_state(gw: GatewayProcess, rule: str, state: str, timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _states(gw)[rule]
        if found["state"] == state:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{rule} is {found['state']}, not {state}: {found}")


def _body(request: dict[str, Any]) -> dict[str, Any]:
    headers = request["headers"]
    assert verify(SECRET, headers["X-Opsgate-Timestamp"], request["body"], headers["X-Opsgate-Signature"])
    return dict(orjson.loads(request["body"]))


def test_fires_once_signed_and_a_failing_receiver_gets_exactly_one_notice(
    start_gateway: Callable[..., GatewayProcess], project: Path, receiver: Receiver
) -> None:
    gw = start_gateway(project, env=ENV)
    assert _states(gw)["broken-errors"]["state"] == "ok"
    _call(gw, "broken", 4)
    firing = _wait_state(gw, "broken-errors", "firing")
    assert [s["subject"] for s in firing["subjects"]] == ["router:broken@1"]
    assert firing["subjects"][0]["value"] == 1.0 and firing["subjects"][0]["episode"] == 1
    # the overall rule is breached too, but waits out its `for: 1h`
    assert _wait_state(gw, "errors-overall", "pending")["subjects"][0]["subject"] == "*"
    assert _states(gw)["latency"]["state"] == "ok"

    notice = _body(receiver.wait("/ok", "alert.firing")[0])
    assert notice["rule"] == "broken-errors" and notice["subject"] == "router:broken@1"
    assert notice["severity"] == "critical" and notice["value"] == 1.0 and notice["threshold"] == 0.5
    assert notice["rules"] == "alert:alerts@1"  # the governed version in force
    # the flaky receiver failed twice, then took it: one notice, the same delivery id each time
    flaky = receiver.wait("/flaky", "alert.firing")
    tries = [r for r in receiver.requests if r["path"] == "/flaky"]
    assert [r["failed"] for r in tries] == [True, True, False]
    assert len({r["headers"]["X-Opsgate-Delivery"] for r in tries}) == 1
    assert _body(flaky[0])["id"] == notice["id"] == "broken-errors/router:broken@1/1"

    # still breached on later rounds: no second notice for the same episode
    _call(gw, "broken", 2)
    time.sleep(1.0)
    assert len(receiver.taken("/ok", "alert.firing")) == 1 and len(receiver.taken("/flaky")) == 1

    # healthy traffic does not count for router:broken; the overall rule leaves pending (6 of 16 errors)
    _call(gw, "healthy", 10)
    _wait_state(gw, "errors-overall", "ok")
    assert receiver.taken("/ok", "alert.resolved") == []  # it never fired: nothing to resolve

    listed = gw.cli("alerts", "list").stdout
    assert "firing   critical broken-errors  error_rate over 60s > 0.5  [router:broken@1]" in listed, listed
    assert "ok       warning  errors-overall" in listed, listed


def test_resolved_notice_once_when_the_condition_clears(
    start_gateway: Callable[..., GatewayProcess],
    project_factory: Callable[..., Path],
    fake_upstream: FakeUpstream,
    receiver: Receiver,
) -> None:
    """A rule over all traffic: errors fire it, healthy traffic brings the rate under the threshold and a
    single resolved notice follows, for the same episode."""
    rules = f"""evaluate_every_s: 0.2
receivers:
  oncall: {{url: "{receiver.url}/ok", secret_env: ALERT_HMAC_SECRET, retries: 2, backoff_s: 0.1}}
rules:
  - {{name: errors, metric: error_rate, window: 1m, threshold: 0.3, min_samples: 3, receivers: [oncall]}}
"""
    routers = {
        "broken": {"deployments": [deployment("up", fake_upstream.url("500-resolve"))]},
        "healthy": {"deployments": [deployment("up", fake_upstream.url("ok"))]},
    }
    gw = start_gateway(
        project_factory(
            routers=routers, files={"config/gateway.yaml": FAST_GATEWAY_YAML, "config/alerts.yaml": rules}
        ),
        env=ENV,
    )
    _call(gw, "broken", 3)
    fired = _body(receiver.wait("/ok", "alert.firing")[0])
    _call(gw, "healthy", 10)  # 3 of 13 = 0.23 < 0.3
    resolved = _body(receiver.wait("/ok", "alert.resolved")[0])
    assert resolved["id"] == fired["id"] == "errors/*/1"
    assert resolved["value"] == pytest.approx(3 / 13) and resolved["firing_since"] == fired["firing_since"]
    time.sleep(1.0)
    assert (
        len(receiver.taken("/ok", "alert.firing")) == 1 and len(receiver.taken("/ok", "alert.resolved")) == 1
    )
    assert _states(gw)["errors"]["state"] == "ok"
    # a second breach is a new episode: announced again
    _call(gw, "broken", 10)  # 13 of 23 errors
    again = _body(receiver.wait("/ok", "alert.firing", count=2)[1])
    assert again["episode"] == 2 and again["id"] == "errors/*/2"


@pytest.mark.postgres
def test_two_replicas_send_one_notice_per_episode(
    start_gateway: Callable[..., GatewayProcess],
    project: Path,
    receiver: Receiver,
    new_pg_database: Callable[[], str],
) -> None:
    db = new_pg_database()
    first = start_gateway(project, env=ENV, database_url=db)
    second = start_gateway(project, env=ENV, database_url=db, admin_key=first.admin_key)
    _call(first, "broken", 2)
    _call(second, "broken", 2)
    receiver.wait("/ok", "alert.firing")
    receiver.wait("/flaky", "alert.firing")
    time.sleep(1.5)  # both replicas judge and deliver several times meanwhile
    assert len(receiver.taken("/ok", "alert.firing")) == 1
    assert len(receiver.taken("/flaky", "alert.firing")) == 1
    assert len([r for r in receiver.requests if r["path"] == "/flaky"]) == 3  # 2 failures, 1 success
    for gw in (first, second):
        assert _states(gw)["broken-errors"]["state"] == "firing"


def test_alert_rules_change_by_promotion_and_removing_one_needs_a_second_admin(
    start_gateway: Callable[..., GatewayProcess], project: Path
) -> None:
    from tests.fakes.gateway import commit_project
    from tests.security.test_governance_rules_governed import admin, new_key

    gw = start_gateway(project, env=ENV)
    alice = new_key(gw, "alice@example.com", ["admin"])
    bob = new_key(gw, "bob@example.com", ["approver"])
    carol = new_key(gw, "carol@example.com", ["admin"])
    assert admin(gw, "GET", "/admin/alerts", bob).json()["source"] == "alert:alerts@1"
    with gw.http() as http:
        assert http.get("/admin/alerts").status_code == 401

    text = (project / "config" / "alerts.yaml").read_text(encoding="utf-8")
    (project / "config" / "alerts.yaml").write_text(text.split("  - name: latency")[0], encoding="utf-8")
    commit_project(project, "drop the latency rule", author=("Alice", "alice@example.com"))
    synced = admin(gw, "POST", "/admin/sync", alice, {})
    assert "alert:alerts@2" in str(synced.json()["rules"]), synced.text
    assert "latency" in _states(gw)  # registered, not in force
    request = admin(gw, "POST", "/admin/promotions", alice, {"ref": "alert:alerts@2", "to": "production"})
    assert request.status_code == 201, request.text
    assert request.json()["rule"]["loosens"] == ["rule 'latency' removed"]
    pid = request.json()["id"]
    assert admin(gw, "POST", f"/admin/promotions/{pid}/approve", bob, {}).status_code == 403
    done = admin(gw, "POST", f"/admin/promotions/{pid}/approve", carol, {})
    assert done.status_code == 200 and done.json()["state"] == "applied", done.text
    listed = admin(gw, "GET", "/admin/alerts", bob).json()
    assert listed["source"] == "alert:alerts@2" and [r["name"] for r in listed["rules"]] == [
        "broken-errors",
        "errors-overall",
    ]
    actions = [e["action"] for e in admin(gw, "GET", "/admin/audit?limit=1000", alice).json()]
    assert actions.count("alias.promote") >= 1
