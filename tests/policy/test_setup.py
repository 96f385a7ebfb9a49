"""Where the counters live: in Redis shared by two gateway processes (the combined rate holds), or
in-process with spend read back from the request log after a restart; and a promoted policy applies live."""

from __future__ import annotations

import secrets
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from gateway.policy.spec import parse_policy, registered_checks
from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import GatewayProcess, commit_project
from tests.fakes.upstream import FakeUpstream
from tests.policy.conftest import make_key, routers

REDIS = "redis://127.0.0.1:6379/0"
BODY = {"model": "echo", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 10}


def limits(rpm: int) -> str:
    return f"""\
rules:
  - name: apps
    match: {{roles: [app]}}
    checks:
      - {{type: rate_limit, rpm: {rpm}, per: principal}}
"""


def post(gw: GatewayProcess, key: str) -> httpx.Response:
    with gw.http() as http:
        return http.post("/v1/chat/completions", json=BODY, headers=gw.auth(key))


def test_redis_limits_hold_across_two_gateway_processes(
    upstream: FakeUpstream, make_project: ProjectFactory, start_gateway: GatewayFactory
) -> None:
    project = make_project(routers(upstream), files={"config/policies.yaml": limits(20)})
    env = {"OPSGATE_REDIS_URL": REDIS, "OPSGATE_REDIS_PREFIX": f"t-{secrets.token_hex(6)}"}
    a = start_gateway(project, env=env)
    b = start_gateway(project, env=env, database_url=a.db_url())
    key = make_key(a, "team")
    b.wait_for_key(key)
    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda i: post((a, b)[i % 2], key), range(60)))
    elapsed = time.monotonic() - started
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(ok) + len(refused) == 60
    # a burst of 20, plus one more each 3 s of the test
    assert 20 <= len(ok) <= 20 + int(elapsed / 3) + 1
    assert {r.headers["x-opsgate-request-id"][:4] for r in ok} == {"req_"}
    served_by = {gw.root_url: 0 for gw in (a, b)}
    for i, r in enumerate(responses):
        if r.status_code == 200:
            served_by[(a, b)[i % 2].root_url] += 1
    assert all(n > 0 for n in served_by.values())  # both processes served part of the one budget
    assert all(r.json()["error"]["code"] == "rate_limit_exceeded" for r in refused)
    assert all(1 <= int(r.headers["retry-after"]) <= 3 for r in refused)


def test_without_redis_each_process_counts_alone(
    upstream: FakeUpstream, make_project: ProjectFactory, start_gateway: GatewayFactory
) -> None:
    project = make_project(routers(upstream), files={"config/policies.yaml": limits(3)})
    a = start_gateway(project)
    b = start_gateway(project, database_url=a.db_url())
    key = make_key(a, "team")
    b.wait_for_key(key)
    statuses = [post(gw, key).status_code for gw in (a, b) for _ in range(4)]
    assert statuses == [200, 200, 200, 429] * 2


SPEND = """\
rules:
  - name: spend
    match: {principals: [spender]}
    checks:
      - {type: budget, usd_per_day: 0.00005}
"""


def test_in_process_spend_survives_a_restart(
    upstream: FakeUpstream, make_project: ProjectFactory, start_gateway: GatewayFactory
) -> None:
    """Each request costs $0.000013 and reserves $0.000019: three fit in $0.00005, the fourth does not;
    after a restart the ledger is read back from the request log, so the next one is refused too."""
    project = make_project(routers(upstream), files={"config/policies.yaml": SPEND})
    first = start_gateway(project)
    key = make_key(first, "spender")
    assert [post(first, key).status_code for _ in range(4)] == [200, 200, 200, 429]
    first.stop()
    second = start_gateway(project, database_url=first.db_url())
    r = post(second, key)
    assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded"


def test_a_promoted_policy_applies_without_a_restart_and_a_broken_file_is_refused_at_sync(
    upstream: FakeUpstream, make_project: ProjectFactory, start_gateway: GatewayFactory
) -> None:
    """The policy in force is policy:policies@production (issue 11.10): an edit does nothing until it is
    committed, synced and promoted; then the running gateway applies it. A broken file never registers."""
    project = make_project(routers(upstream), files={"config/policies.yaml": "rules: []\n"})
    gw = start_gateway(project)
    key = make_key(gw, "team")
    approver = make_key(gw, "reviewer", "approver")
    before = gw.log_row(post(gw, key).headers["x-opsgate-request-id"])["extra"]["policy"]
    (project / "config/policies.yaml").write_text(limits(1), encoding="utf-8")
    new_hash = parse_policy(limits(1), registered_checks()).short_hash
    time.sleep(1)
    assert gw.log_row(post(gw, key).headers["x-opsgate-request-id"])["extra"]["policy"] == before
    commit_project(project, "rpm 1")
    gw.cli("sync", key=gw.admin_key)
    engineer = make_key(gw, "engineer", "prompt-engineer")  # not the admin who created the approver's key
    pid = gw.cli("promote", "policy:policies@2", "--to", "production", key=engineer).stdout.split()[-1]
    gw.cli("approve", pid, key=approver)  # tightening: the standard rule
    deadline = time.monotonic() + 10
    while True:
        r = post(gw, key)
        row = gw.log_row(r.headers["x-opsgate-request-id"])
        if row["extra"]["policy"] == new_hash:
            break
        assert time.monotonic() < deadline, "the new policy was not picked up"
        time.sleep(0.2)
    assert before != new_hash
    (project / "config/policies.yaml").write_text(
        "rules: [{name: x, checks: [{type: nope}]}]\n", encoding="utf-8"
    )
    commit_project(project, "broken")
    synced = gw.cli("sync", key=gw.admin_key, check=False)
    assert synced.returncode == 1 and "config/policies.yaml" in synced.stderr
    r = post(gw, key)
    assert r.status_code == 429  # still the rpm 1 policy
    assert gw.log_row(r.headers["x-opsgate-request-id"])["extra"]["policy"] == new_hash
    assert "opsgate_policy_reload_failed 0.0" in gw.metrics()
