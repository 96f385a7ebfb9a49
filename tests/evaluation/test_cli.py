"""`opsgate eval run` output: when calls fail, the distinct errors with their counts are on stderr, so
"every call failed" is never the only line a user gets."""

from __future__ import annotations

import json

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import deployment
from tests.fakes.upstream import FakeUpstream

SUITE = """name: failing
target: prompt:failing@production
dataset: evals/data/failing.jsonl
metrics: [exact_match]
"""
PROMPT = "name: failing\nrouter: broken\nmessages:\n  - {role: system, content: Answer briefly.}\n"


def test_a_run_whose_every_call_fails_shows_each_distinct_error_with_its_count(
    make_project: ProjectFactory, start_gateway: GatewayFactory, fake_upstream: FakeUpstream
) -> None:
    cases = "\n".join(json.dumps({"question": f"question {i}?", "reference": "x"}) for i in range(3))
    project = make_project(
        routers={"broken": {"deployments": [deployment("down", fake_upstream.url("503-evalcli"))]}},
        files={
            "prompts/failing.yaml": PROMPT,
            "evals/failing.yaml": SUITE,
            "evals/data/failing.jsonl": cases,
        },
    )
    gw = start_gateway(project)
    done = gw.cli(
        "eval",
        "run",
        "evals/failing.yaml",
        "--url",
        gw.base_url,
        "--no-progress",
        key=gw.admin_key,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.splitlines()
    start = lines.index("3 of 3 calls failed:")
    assert lines[start + 1].startswith("  3x HTTP 50")  # one distinct error, counted once per case
    assert "router:broken" in lines[start + 1] or "down" in lines[start + 1]
    assert lines[-1] == "opsgate: every call failed; nothing was evaluated (see the errors above)"
