"""Shadow rollouts on the real server with the fake upstream: the candidate answers a copy of live traffic
off the request path. Live answers are the control's, shadow calls are logged as `arm: shadow` and count
against no caller's limits, a slow candidate does not slow the live answer, the bound on shadow calls in
flight drops (and counts) what exceeds it, and the evaluator judges the shadow arm."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web

from tests.fakes.gateway import FAST_GATEWAY_YAML, GatewayProcess, commit_project
from tests.fakes.upstream import FakeUpstream, Hit
from tests.policy.conftest import make_key
from tests.rollouts.test_server import _new_key, _router, _status, _wait

CANDIDATE_TEXT = "the candidate's own answer"
GATEWAY_YAML = FAST_GATEWAY_YAML + "rollouts:\n  check_interval_s: 0.3\n  shadow_max_in_flight: 3\n"
POLICIES = """\
rules:
  - name: shadow-app
    match: {principals: [shadow-app]}
    checks:
      - {type: rate_limit, rpm: 30}
"""


async def mode_candidate(hit: Hit) -> web.StreamResponse | None:
    """`shadowcand-<ms>`: sleeps, then answers a text of its own (never the echo the control gives)."""
    import asyncio

    await asyncio.sleep(hit.int_arg(0) / 1000)
    return await hit.reply(CANDIDATE_TEXT)


@pytest.fixture(scope="module")
def gw(
    project_factory: Callable[..., Path],
    gateway_factory: Callable[..., GatewayProcess],
    fake_upstream: FakeUpstream,
) -> Iterator[tuple[GatewayProcess, dict[str, str]]]:
    """`mirror` and `slowmirror` at version 1 (the echoing upstream) in production; their version 2
    answers its own text, `mirror` at once, `slowmirror` after 300 ms."""
    fake_upstream.add_mode("shadowcand", mode_candidate)
    ok = fake_upstream.url("ok")
    root = project_factory(
        routers={"mirror": _router("mirror", ok, "v1"), "slowmirror": _router("slowmirror", ok, "v1")},
        files={"config/gateway.yaml": GATEWAY_YAML, "config/policies.yaml": POLICIES},
    )
    gw = gateway_factory(root)
    fast, slow = fake_upstream.url("shadowcand-0"), fake_upstream.url("shadowcand-300")
    (root / "config/routers/mirror.yaml").write_text(_router("mirror", fast, "v2"))
    (root / "config/routers/slowmirror.yaml").write_text(_router("slowmirror", slow, "v2"))
    commit_project(root, "candidates")
    gw.cli("sync", key=gw.admin_key)
    keys = {
        "engineer": _new_key(gw, "engineer", "engineer@example.com", ["prompt-engineer"]),
        "approver": _new_key(gw, "approver", "approver@example.com", ["approver"]),
        "app": make_key(gw, "shadow-app"),
    }
    with gw:
        yield gw, keys


def _start_shadow(gw: GatewayProcess, keys: dict[str, str], name: str, **extra: Any) -> dict[str, Any]:
    body = {"kind": "router", "name": name, "candidate": 2, "mode": "shadow", "share": 1.0} | extra
    with gw.http() as http:
        r = http.post("/admin/rollouts", json=body, headers=gw.auth(keys["engineer"]))
        assert r.status_code == 201, r.text
        started = r.json()
        assert started["mode"] == "shadow" and started["state"] == "awaiting_approval"
        ok = http.post(
            f"/admin/promotions/{started['promotion_id']}/approve", json={}, headers=gw.auth(keys["approver"])
        )
        assert ok.status_code == 200, ok.text
    _wait(gw, started["id"], {"active"})
    time.sleep(0.6)  # the catalog sees the activation within its refresh interval (0.2 s)
    return dict(started)


def _ask(http: httpx.Client, gw: GatewayProcess, key: str, model: str, i: int) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": f"question {i}"}], "user": f"u{i}"}
    return http.post("/v1/chat/completions", json=body, headers=gw.auth(key))


def _ask_streamed(http: httpx.Client, gw: GatewayProcess, key: str, model: str, i: int) -> tuple[str, str]:
    """A streamed request: its request id and the text its chunks carried."""
    body = {"model": model, "messages": [{"role": "user", "content": f"question {i}"}], "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body, headers=gw.auth(key)) as r:
        assert r.status_code == 200
        text = ""
        for line in r.iter_lines():
            if line.startswith("data: {"):
                for choice in orjson.loads(line[6:]).get("choices") or []:
                    text += (choice.get("delta") or {}).get("content") or ""
        return r.headers["x-opsgate-request-id"], text


def _shadow_rows(gw: GatewayProcess, rollout_id: str, want: int, timeout: float = 10) -> list[dict[str, Any]]:
    """The shadow rows of a rollout, read from the database, once there are `want` of them."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from gateway.db.models import RequestLog

    deadline = time.monotonic() + timeout
    while True:
        with Session(gw._db()) as session:
            found = session.scalars(select(RequestLog)).all()
            rows = [
                {c.name: getattr(r, c.key) for c in RequestLog.__table__.columns}
                for r in found
                if (r.extra or {}).get("rollout", {}).get("id") == rollout_id
                and r.extra["rollout"]["arm"] == "shadow"
            ]
        if len(rows) >= want or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def test_shadow_answers_are_logged_never_returned_and_count_against_no_limit(
    gw: tuple[GatewayProcess, dict[str, str]], fake_upstream: FakeUpstream
) -> None:
    gateway, keys = gw
    started = _start_shadow(gateway, keys, "mirror", min_sample=1000, interval_s=3600)
    before = fake_upstream.count("shadowcand-0")
    live_ids, streamed = [], []
    with gateway.http() as http:
        for i in range(30):  # the key's whole minute: rpm 30
            if i % 10 == 9:  # a streamed live answer is shadowed too, once its stream has ended
                rid, text = _ask_streamed(http, gateway, keys["app"], "mirror", i)
                assert text == f"echo: question {i}"
                live_ids.append(rid)
                streamed.append(rid)
                continue
            r = _ask(http, gateway, keys["app"], "mirror", i)
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"] == f"echo: question {i}"  # the control's echo
            assert r.headers["x-opsgate-versions"].startswith("router:mirror@1#")
            live_ids.append(r.headers["x-opsgate-request-id"])
            time.sleep(0.01)
        # the 31st is refused: shadow calls took nothing from the limit (else this would be the 16th)
        refused = _ask(http, gateway, keys["app"], "mirror", 30)
        assert refused.status_code == 429, refused.text
    stats = _status(gateway, started["id"])["shadow"]
    assert stats["sampled"] == 30 and stats["started"] + stats["dropped"] == 30, stats
    assert stats["started"] >= 20 and stats["failed"] == 0, stats  # a fast candidate rarely meets the bound
    rows = _shadow_rows(gateway, started["id"], stats["started"])
    assert len(rows) == stats["started"] == fake_upstream.count("shadowcand-0") - before
    live = gateway.log_rows(live_ids)
    for row in rows:
        assert row["status"] == 200 and row["principal"] == "shadow-app"
        assert [a.split("#")[0] for a in row["artifacts"]] == ["router:mirror@2"]
        source = live[row["extra"]["shadow_of"]]  # the live request it copied
        assert source["extra"]["rollout"] == {
            "id": started["id"], "arm": "control", "target": "router:mirror", "shadowed": True
        }  # fmt: skip
        assert [a.split("#")[0] for a in source["artifacts"]] == ["router:mirror@1"]
        assert not any(d.get("verdict") == "blocked" for d in row["decisions"])
        assert row["stream"] is False  # read whole, then dropped
    assert {r["extra"]["shadow_of"] for r in rows} & set(streamed)
    # no shadow call is in the request metrics: only the caller's 31 requests are
    counted = [line for line in gateway.metrics().splitlines() if line.startswith("opsgate_requests_total{")]
    live_lines = [line for line in counted if 'artifact="router:mirror@1"' in line]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in live_lines) == 31, counted
    assert not [line for line in counted if "router:mirror@2" in line], counted
    with gateway.http() as http:
        http.post(f"/admin/rollouts/{started['id']}/stop", json={"reason": "done"}, headers=gateway.auth())


def _p50(gw: GatewayProcess, key: str, model: str, n: int = 30) -> float:
    times = []
    with gw.http() as http:
        for i in range(n):
            t0 = time.perf_counter()
            r = _ask(http, gw, key, model, i)
            times.append((time.perf_counter() - t0) * 1000)
            assert (
                r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == f"echo: question {i}"
            )
    return statistics.median(times)


def test_a_slow_candidate_does_not_slow_live_answers_and_the_bound_drops(
    gw: tuple[GatewayProcess, dict[str, str]], fake_upstream: FakeUpstream
) -> None:
    gateway, keys = gw
    admin = gateway.admin_key
    _p50(gateway, admin, "slowmirror", 5)  # warm up
    without = _p50(gateway, admin, "slowmirror")
    started = _start_shadow(
        gateway, keys, "slowmirror", min_sample=3, interval_s=3600, metrics=[{"metric": "latency_ms"}]
    )
    before = fake_upstream.count("shadowcand-300")
    began = time.monotonic()
    with_shadow = _p50(gateway, admin, "slowmirror")
    elapsed = time.monotonic() - began
    print(f"live p50 without shadow {without:.1f} ms, with a 300 ms shadow candidate {with_shadow:.1f} ms")
    # a live answer that waited for its 300 ms shadow would add 300 ms; noise on a busy machine does not
    assert with_shadow < max(2 * without, without + 50), (without, with_shadow)
    stats = _status(gateway, started["id"])["shadow"]
    # 30 quick requests against shadow calls of 300 ms, at most 3 in flight: at most 3 start per 300 ms
    assert stats["sampled"] == 30 and stats["started"] + stats["dropped"] == 30, stats
    assert 3 <= stats["started"] <= 3 * (elapsed / 0.3 + 1) and stats["dropped"] >= 1, (stats, elapsed)
    rows = _shadow_rows(gateway, started["id"], stats["started"])
    assert len(rows) == stats["started"] == fake_upstream.count("shadowcand-300") - before
    assert all(r["latency_ms"] >= 300 for r in rows)
    metrics = gateway.metrics()
    assert f"opsgate_shadow_dropped {float(stats['dropped'])}" in metrics
    # the evaluator judges the shadow arm like a canary's: much slower, so rolled back
    with gateway.http() as http:
        r = http.post(f"/admin/rollouts/{started['id']}/check", headers=gateway.auth())
    assert r.status_code == 200, r.text
    [test] = r.json()["tests"]
    assert r.json()["state"] == "rolled_back" and test["verdict"] == "worse", r.json()
    assert test["metric"] == "latency_ms" and test["mean_candidate"] >= 300 > test["mean_control"]


def test_the_panel_lists_live_and_ended_rollouts_with_their_last_checks(
    gw: tuple[GatewayProcess, dict[str, str]],
) -> None:
    gateway, keys = gw
    steps = [{"after_s": 0, "share": 0.5}, {"after_s": 3600, "share": 1.0}]
    with gateway.http() as http:
        r = http.post(
            "/admin/rollouts",
            json={"kind": "router", "name": "mirror", "candidate": 2, "share": 0.25, "schedule": steps},
            headers=gateway.auth(keys["engineer"]),
        )
        assert r.status_code == 201, r.text
        live_id = r.json()["id"]
        panel = http.get("/admin/rollouts/panel", headers=gateway.auth())
        assert panel.status_code == 200, panel.text
        short = http.get("/admin/rollouts/panel", params={"limit": 1}, headers=gateway.auth()).json()
        bad = http.get("/admin/rollouts/panel", params={"limit": 500}, headers=gateway.auth())
        anonymous = http.get("/admin/rollouts/panel")
    data = panel.json()
    items = {i["id"]: i for i in data["rollouts"]}
    assert data["live"] == 1 and data["rollouts"][0]["id"] == live_id
    live = items[live_id]
    assert live["state"] == "awaiting_approval" and live["share_now"] == 0.0  # not approved yet: nobody
    assert live["target"] == "router:mirror@production" and live["mode"] == "canary"
    ended = [i for i in data["rollouts"] if i["id"] != live_id]
    assert {i["state"] for i in ended} == {"stopped", "rolled_back"} and all(
        i["mode"] == "shadow" for i in ended
    )
    [rolled] = [i for i in ended if i["state"] == "rolled_back"]
    assert rolled["decision"] == "rolled_back" and rolled["metrics"][0]["metric"] == "latency_ms"
    assert rolled["metrics"][0]["verdict"] == "worse" and rolled["requests"]["candidate"] >= 3
    assert rolled["shadow"]["dropped"] >= 1  # this replica's shadow counts, as in the status API
    assert len(short["rollouts"]) == 2  # the live one, and one ended
    assert bad.status_code in (400, 422) and "limit" in bad.text
    assert anonymous.status_code == 401 and anonymous.json()["error"]["type"]
    with gateway.http() as http:
        promotion = _status(gateway, live_id)["promotion_id"]
        ok = http.post(
            f"/admin/promotions/{promotion}/approve", json={}, headers=gateway.auth(keys["approver"])
        )
        assert ok.status_code == 200, ok.text
        _wait(gateway, live_id, {"active"})
        item = http.get("/admin/rollouts/panel", headers=gateway.auth()).json()["rollouts"][0]
        assert item["id"] == live_id and item["state"] == "active" and item["share_now"] == 0.5
        http.post(f"/admin/rollouts/{live_id}/stop", json={"reason": "done"}, headers=gateway.auth())
