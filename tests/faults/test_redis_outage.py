"""Redis down (issue 13), against a throwaway `redis-server` on a free port that the test kills and starts
again (never the machine's shared 127.0.0.1:6379): each limit check follows the policy's documented
`on_store_error` (allow: fail open, served and not counted; block: fail closed, 503 with Retry-After),
/readyz (200, degraded) and /metrics say so, requests do not wait on the dead Redis, the log has one line
per change of state, and limits hold again once Redis is back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import FAST_GATEWAY_YAML, GatewayProcess, deployment
from tests.fakes.services import ThrowawayRedis
from tests.fakes.upstream import FakeUpstream
from tests.monitoring.test_requestlog import metric

RPM = 5
CHAT = {"model": "echo", "messages": [{"role": "user", "content": "limits"}]}


def policies(on_store_error: str) -> str:
    return f"""\
on_store_error: {on_store_error}
rules:
  - name: limited
    match: {{principals: [limited]}}
    checks:
      - {{type: rate_limit, rpm: {RPM}}}
"""


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[ThrowawayRedis]:
    server = ThrowawayRedis(tmp_path / "redis").start()
    yield server
    server.destroy()


def gateway(
    start: GatewayFactory, make: ProjectFactory, up: FakeUpstream, redis: ThrowawayRedis, mode: str
) -> tuple[GatewayProcess, str]:
    routers = {"echo": {"deployments": [deployment("e", up.url("ok-redis"))]}}
    files = {"config/gateway.yaml": FAST_GATEWAY_YAML, "config/policies.yaml": policies(mode)}
    gw = start(make(routers=routers, files=files), env={"OPSGATE_REDIS_URL": redis.url})
    with gw.http() as http:
        r = http.post(
            "/admin/keys", json={"name": "lim", "roles": ["app"], "principal": "limited"}, headers=gw.auth()
        )
        assert r.status_code == 201, r.text
    key = r.json()["key"]
    gw.wait_for_key(key)
    return gw, key


def statuses(gw: GatewayProcess, key: str, n: int) -> list[int]:
    with gw.http() as http:
        return [
            http.post("/v1/chat/completions", json=CHAT, headers=gw.auth(key)).status_code for _ in range(n)
        ]


def test_redis_down_follows_on_store_error_and_recovers(
    start_gateway: GatewayFactory,
    make_project: ProjectFactory,
    fake_upstream: FakeUpstream,
    redis: ThrowawayRedis,
) -> None:
    open_gw, open_key = gateway(start_gateway, make_project, fake_upstream, redis, "allow")
    closed_gw, closed_key = gateway(start_gateway, make_project, fake_upstream, redis, "block")
    assert statuses(open_gw, open_key, RPM + 3).count(429) >= 3  # the limit holds while Redis is up
    assert open_gw.metrics() and metric(open_gw.metrics(), "opsgate_limit_store_up") == 1

    redis.kill()
    started = time.monotonic()
    assert statuses(open_gw, open_key, 20) == [200] * 20  # fail open: served, not counted
    assert time.monotonic() - started < 10  # nobody waits on the dead Redis
    with closed_gw.http() as http:  # fail closed: 503 with Retry-After, OpenAI-style
        r = http.post("/v1/chat/completions", json=CHAT, headers=closed_gw.auth(closed_key))
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "limit_store_unavailable" and int(r.headers["retry-after"]) >= 1
    for gw, fail_open in ((open_gw, 1), (closed_gw, 0)):
        with gw.http() as http:
            ready = http.get("/readyz")
        body = ready.json()
        assert ready.status_code == 200 and body["status"] == "degraded" and "redis" in body["degraded"], body
        assert body["checks"]["redis"]["up"] is False
        assert body["checks"]["redis"]["on_store_error"] == ("allow" if fail_open else "block")
        text = gw.metrics()
        assert metric(text, "opsgate_limit_store_up") == 0
        assert metric(text, "opsgate_limit_store_fail_open") == fail_open
        assert metric(text, "opsgate_limit_store_errors") >= 1

    redis.start()  # an empty Redis on the same port: the counters start again
    deadline = time.monotonic() + 15
    while 429 not in statuses(open_gw, open_key, RPM + 1):  # the limit holds again
        assert time.monotonic() < deadline, "the rate limit does not hold again after Redis came back"
        time.sleep(0.3)
    # The fail-closed gateway tries the dead store once per probe interval (0.5 s) and lets nobody
    # wait on it in between, so it serves again within one interval of Redis being back.
    deadline = time.monotonic() + 5
    while statuses(closed_gw, closed_key, 1) != [200]:
        assert time.monotonic() < deadline, (
            "the fail-closed gateway does not serve again after Redis came back"
        )
        time.sleep(0.1)
    for gw in (open_gw, closed_gw):
        with gw.http() as http:
            body = http.get("/readyz").json()
        assert body["status"] == "ready" and body["checks"]["redis"]["up"] is True, body
        assert metric(gw.metrics(), "opsgate_limit_store_up") == 1
        out = gw.output()
        assert "Traceback" not in out, out[-3000:]
        assert out.count("limit store: Redis at") <= 3 and "back after" in out, out[-3000:]
