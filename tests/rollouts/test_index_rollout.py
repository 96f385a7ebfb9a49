"""Rollouts of a retrieval index: a RAG prompt's index is resolved through the rollout like its prompt and
router, so a canary splits callers between index versions (the versions header and the log row say which),
and a shadow rollout retrieves from the candidate index off the request path."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import FAST_GATEWAY_YAML, GatewayProcess, commit_project, deployment
from tests.fakes.upstream import FakeUpstream
from tests.flow.test_chat_flow import KB_FILES, KB_INDEX, KBQA
from tests.rollouts.test_server import _new_key, _status, _wait
from tests.rollouts.test_shadow import _shadow_rows

USERS = [f"reader-{i}" for i in range(40)]


@pytest.fixture(scope="module")
def gw(
    fake_upstream: FakeUpstream, project_factory: ProjectFactory, gateway_factory: GatewayFactory
) -> Iterator[tuple[GatewayProcess, dict[str, str]]]:
    """`kbqa` retrieves from `kb`; version 1 of `kb` is built at first start, version 2 (smaller chunks)
    by hand: production stays on 1."""
    routers: dict[str, Any] = {
        "echo": {"deployments": [deployment("up", fake_upstream.url("ok"))]},
        "vectors": {"kind": "embedding", "deployments": [deployment("up", fake_upstream.url("ok"))]},
    }
    files = {
        "config/gateway.yaml": FAST_GATEWAY_YAML + "rollouts:\n  check_interval_s: 3600\n",
        "prompts/kbqa.yaml": KBQA,
        "config/indexes/kb.yaml": KB_INDEX,
        **KB_FILES,
    }
    root = project_factory(routers, files=files)
    gw = gateway_factory(root)
    (root / "config/indexes/kb.yaml").write_text(KB_INDEX + "chunker: {type: tokens, size: 64, overlap: 8}\n")
    commit_project(root, "kb: smaller chunks")
    gw.cli("index", "build", "kb", "--quiet", key=gw.admin_key)
    keys = {
        "engineer": _new_key(gw, "engineer", "engineer@example.com", ["prompt-engineer"]),
        "approver": _new_key(gw, "approver", "approver@example.com", ["approver"]),
    }
    with gw:
        yield gw, keys


def _start(gw: GatewayProcess, keys: dict[str, str], **extra: Any) -> str:
    body = {"kind": "index", "name": "kb", "candidate": 2, "share": 0.5} | extra
    with gw.http() as http:
        r = http.post("/admin/rollouts", json=body, headers=gw.auth(keys["engineer"]))
        assert r.status_code == 201, r.text
        started = r.json()
        ok = http.post(
            f"/admin/promotions/{started['promotion_id']}/approve", json={}, headers=gw.auth(keys["approver"])
        )
        assert ok.status_code == 200, ok.text
        assert http.post(f"/admin/rollouts/{started['id']}/check", headers=gw.auth()).status_code == 200
    _wait(gw, started["id"], {"active"}, timeout=2)
    time.sleep(0.6)  # the catalog sees the activation within its refresh interval
    return str(started["id"])


def _ask_all(gw: GatewayProcess) -> dict[str, tuple[str, str]]:
    """Per user: the index version that answered (from the versions header) and the request id."""
    out = {}
    with gw.http() as http:
        for user in USERS:
            body = {
                "model": "kbqa",
                "messages": [{"role": "user", "content": "when do orders ship?"}],
                "user": user,
            }
            r = http.post("/v1/chat/completions", json=body, headers=gw.auth())
            assert r.status_code == 200, r.text
            index = [
                v.split("#")[0] for v in r.headers["x-opsgate-versions"].split(",") if v.startswith("index:")
            ]
            out[user] = (index[0], r.headers["x-opsgate-request-id"])
    return out


def test_an_index_canary_splits_callers_between_index_versions(
    gw: tuple[GatewayProcess, dict[str, str]],
) -> None:
    gateway, keys = gw
    rollout = _start(gateway, keys)
    first, second = _ask_all(gateway), _ask_all(gateway)
    assert {u: v for u, (v, _) in first.items()} == {u: v for u, (v, _) in second.items()}  # sticky
    versions = [v for v, _ in first.values()]
    assert set(versions) == {"index:kb@1", "index:kb@2"} and 8 <= versions.count("index:kb@2") <= 32
    rows = gateway.log_rows([rid for _, rid in first.values()])
    for version, rid in first.values():
        tag = rows[rid]["extra"]["rollout"]
        assert tag["id"] == rollout and tag["target"] == "index:kb"
        assert tag["arm"] == ("candidate" if version == "index:kb@2" else "control")
        assert rows[rid]["extra"]["retrieval"]["index"].startswith(version)
    with gateway.http() as http:
        http.post(f"/admin/rollouts/{rollout}/stop", json={"reason": "done"}, headers=gateway.auth())


def test_an_index_shadow_retrieves_from_the_candidate_off_the_path(
    gw: tuple[GatewayProcess, dict[str, str]],
) -> None:
    gateway, keys = gw
    time.sleep(0.6)  # the stopped canary has left every replica's catalog
    rollout = _start(gateway, keys, mode="shadow", share=1.0)
    answered = _ask_all(gateway)
    assert {v for v, _ in answered.values()} == {"index:kb@1"}  # every live answer is the control's
    stats = _status(gateway, rollout)["shadow"]
    assert stats["sampled"] == len(USERS) and stats["started"] >= 1
    rows = _shadow_rows(gateway, rollout, stats["started"])
    assert len(rows) == stats["started"]
    for row in rows:
        assert [a.split("#")[0] for a in row["artifacts"]] == ["prompt:kbqa@1", "router:echo@1", "index:kb@2"]
        assert row["status"] == 200 and row["extra"]["retrieval"]["index"].startswith("index:kb@2")
    with gateway.http() as http:
        http.post(f"/admin/rollouts/{rollout}/stop", json={"reason": "done"}, headers=gateway.auth())
