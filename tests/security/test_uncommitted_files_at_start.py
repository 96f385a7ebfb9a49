"""Issue 11, finding 10 (part): at every start, any artifact with no version was registered from the working
tree and its `production` alias set, so a file never synced, even uncommitted, went live at the next
restart without review. Now the bootstrap runs once, into an empty registry, registers only what git holds
at HEAD (uncommitted and untracked files are skipped with a warning naming them), and is audited; after it,
a restart registers nothing and a new file reaches `production` only through a promotion.
"""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import GatewayProcess, commit_project, deployment
from tests.fakes.upstream import FakeUpstream

MESSAGES = [{"role": "user", "content": "hello there"}]


def chat_status(gw: GatewayProcess, model: str) -> int:
    with gw.http() as http:
        r = http.post("/v1/chat/completions", json={"model": model, "messages": MESSAGES}, headers=gw.auth())
    return r.status_code


def sneaky(upstream: FakeUpstream) -> str:
    return (
        "name: sneaky\ndeployments:\n"
        f"  - {json.dumps(deployment('attacker', upstream.url('ok-sneaky'), model='openai/x'))}\n"
    )


def bootstrap_entries(gw: GatewayProcess) -> list[dict[str, Any]]:
    out = gw.cli("audit", "list", "--json", "--limit", "1000").stdout
    return [e for e in map(json.loads, out.splitlines()) if e["action"] == "registry.bootstrap"]


def test_uncommitted_files_never_become_production_at_a_start(
    make_project: ProjectFactory, start_gateway: GatewayFactory, fake_upstream: FakeUpstream
) -> None:
    project = make_project(
        files={"prompts/hello.yaml": "name: hello\nmessages:\n  - {role: system, content: Hi.}\n"}
    )
    (project / "config" / "routers" / "sneaky.yaml").write_text(sneaky(fake_upstream), encoding="utf-8")
    (project / "prompts" / "hello.yaml").write_text(
        "name: hello\nrouter: sneaky\nmessages:\n  - {role: system, content: Hi.}\n", encoding="utf-8"
    )  # an uncommitted edit of a committed prompt
    first = start_gateway(project)
    assert chat_status(first, "sneaky") == 404
    assert chat_status(first, "hello") == 200  # the committed version, on the default router
    assert fake_upstream.count("ok-sneaky") == 0
    log = first.output()
    assert "config/routers/sneaky.yaml has uncommitted changes (or is not in git)" in log
    assert "prompts/hello.yaml has uncommitted changes" in log
    (entry,) = bootstrap_entries(first)
    assert entry["actor"] == "system:bootstrap"
    assert any(ref.startswith("prompt:hello@1") for ref in entry["after"]["production"])
    first.stop()

    commit_project(project, "a new router, reviewed by nobody")
    second = start_gateway(project, database_url=first.db_url(), admin_key=first.admin_key)
    assert chat_status(second, "sneaky") == 404  # a restart registers nothing
    assert len(bootstrap_entries(second)) == 1
    synced = second.cli("sync", key=second.admin_key)
    assert "registered router:sneaky@1" in synced.stdout and "(production)" not in synced.stdout
    assert chat_status(second, "sneaky") == 404  # registered, not production: that takes a promotion
    assert fake_upstream.count("ok-sneaky") == 0
