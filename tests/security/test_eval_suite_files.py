"""Attack: an eval suite (evals/*.yaml, committed by a prompt engineer, run by CI or an approver with
`opsgate eval run`) makes the runner read a file outside the project and send it through the gateway.

Before the fix the suite's files were opened as named: a template file that is a symbolic link (to a
secret file, through a linked directory), a dataset path that is absolute, goes up with `..` or is a
link; the secret became a message sent upstream (here, to the loopback "attacker" upstream) and a
stored eval case. Suite files are now read like every file an author names (gateway/registry/tree.py):
a regular file below the project (dataset) or the suite's directory (templates), never through a link,
never absolute or with `..`. The run stops before any call, exit 2, with one line naming the suite,
the line and the field.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import GatewayProcess, commit_project, deployment
from tests.fakes.upstream import FakeUpstream
from tests.security.conftest import Canary

MODE = "ok-exfil-evals"


def suite(dataset: str, template: str = "templates/ok.j2") -> str:
    return (
        "name: leak\n"
        "target: router:exfil\n"
        "messages:\n"
        f"  - {{role: system, file: {template}}}\n"
        "  - {role: user, content: '{{ question }}'}\n"
        f"dataset: {dataset}\n"
        "metrics: [exact_match]\n"
    )


@pytest.fixture
def project(make_project: ProjectFactory, fake_upstream: FakeUpstream, canary: Canary) -> tuple[Path, Path]:
    """A project with a legitimate suite; returns (project, a JSONL dataset outside it holding the secret)."""
    outside = canary.file.parent / "cases.jsonl"
    outside.write_text(json.dumps({"id": "1", "question": f"say {canary.value}"}) + "\n", encoding="utf-8")
    root = make_project(
        routers={"exfil": {"deployments": [deployment("attacker", fake_upstream.url(MODE))]}},
        files={
            "evals/ok.yaml": suite("evals/data/ok.jsonl"),
            "evals/templates/ok.j2": "Answer briefly.",
            "evals/data/ok.jsonl": json.dumps({"id": "1", "question": "hello"}) + "\n",
        },
    )
    return root, outside


def plant(root: Path, canary: Canary, outside: Path) -> dict[str, tuple[str, int, str]]:
    """The attacker's suites: name -> (the suite text, the line of the field, the field and problem)."""
    evals = root / "evals"
    os.symlink(canary.file, evals / "templates" / "leak.j2")
    os.symlink(canary.file.parent, evals / "templates" / "linked")
    os.symlink(outside, evals / "data" / "leak.jsonl")
    os.symlink(canary.file.parent, evals / "linked_data")
    up = os.path.relpath(outside, root)
    spool = root / ".opsgate" / "spool" / "request-log"  # what the data directory keeps: log rows
    spool.mkdir(parents=True)
    (spool / "0000000001-1.jsonl").write_text(outside.read_text(encoding="utf-8"), encoding="utf-8")
    suites = {
        "template_link": (suite("evals/data/ok.jsonl", "templates/leak.j2"), 4, "messages.0.file: 'templates/leak.j2' is a symbolic link"),
        "template_dir": (suite("evals/data/ok.jsonl", f"templates/linked/{canary.file.name}"), 4, "messages.0.file: 'templates/linked/secret.txt' is reached through templates/linked, a symbolic link"),
        "dataset_absolute": (suite(str(outside)), 6, "dataset.path: "),
        "dataset_up": (suite(up), 6, "dataset.path: "),
        "dataset_link": (suite("evals/data/leak.jsonl"), 6, "dataset.path: 'evals/data/leak.jsonl' is a symbolic link"),
        "dataset_dir": (suite("evals/linked_data/cases.jsonl"), 6, "is reached through evals/linked_data, a symbolic link"),
        "dataset_own": (suite(".opsgate/spool/request-log/0000000001-1.jsonl"), 6, "dataset.path: '.opsgate/spool/request-log/0000000001-1.jsonl' names a file opsgate keeps for itself"),
    }  # fmt: skip
    for name, (text, _, _) in suites.items():
        (evals / f"{name}.yaml").write_text(text, encoding="utf-8")
    return suites


def run(gw: GatewayProcess, name: str) -> tuple[int, str]:
    done = gw.cli(
        "eval",
        "run",
        f"evals/{name}.yaml",
        "--url",
        gw.base_url,
        "--no-progress",
        key=gw.admin_key,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def test_eval_suites_never_read_files_outside_the_project(
    project: tuple[Path, Path],
    start_gateway: GatewayFactory,
    fake_upstream: FakeUpstream,
    canary: Canary,
) -> None:
    root, outside = project
    suites = plant(root, canary, outside)
    commit_project(root, "eval suites")
    gw = start_gateway(root, env=canary.env)
    fake_upstream.clear()

    code, output = run(gw, "ok")  # the legitimate suite runs and sends its template
    assert code in (0, 1), output
    bodies = [h["json"] for h in fake_upstream.hits(MODE)]
    assert any("Answer briefly." in str(b) for b in bodies), output

    for name, (_, line, words) in suites.items():
        code, output = run(gw, name)
        assert code == 2, f"{name}: {output}"
        where = f"evals/{name}.yaml:{line}: " if line else f"evals/{name}.yaml"
        found = [ln for ln in output.splitlines() if where in ln and words in ln]
        assert found, f"{name}: no line with {where!r} and {words!r} in:\n{output}"
        assert "Traceback" not in output
        assert not canary.found_in(output), name
    assert not canary.found_in([h["json"] for h in fake_upstream.hits(MODE)])
    assert not canary.found_in(gw.logs(limit=1000))


def test_a_suite_template_is_bounded_like_a_prompts(
    project: tuple[Path, Path], start_gateway: GatewayFactory, fake_upstream: FakeUpstream
) -> None:
    """A suite's templates are an author's too: `{{ 9**(9**8) }}` burned minutes of CPU in the runner
    (then a traceback); it now stops at once with the render limit's message, before any call."""
    root, _ = project
    text = suite("evals/data/ok.jsonl").replace("'{{ question }}'", "'{{ 9**(9**8) }}'")
    (root / "evals" / "slow.yaml").write_text(text, encoding="utf-8")
    commit_project(root, "a slow suite")
    gw = start_gateway(root)
    fake_upstream.clear()
    started = time.monotonic()
    code, output = run(gw, "slow")
    assert code == 2, output
    assert time.monotonic() - started < 30
    assert "suite 'leak' message 1: the template built an integer of more than" in output, output
    assert "Traceback" not in output
    assert fake_upstream.hits(MODE) == []
