"""Issue 11, finding 2: a prompt template that is a symbolic link (to a secret file, to /proc/self/environ,
through a linked directory) must never be read, registered or served through chat.

The attacker is a prompt engineer: they commit a prompt whose template is a link and a router that sends
the rendered prompt to a loopback "attacker" listener (the fake upstream, which records every body). The
canary secret sits in a file outside the project and in the gateway's environment. The secure outcome:
`opsgate serve` refuses to start on such a file and `opsgate sync` refuses to register it, each with one
line naming the prompt file and the line of `file:`; the canary reaches no upstream, no answer, no log and
no row of the registry. Regular templates keep working.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import Cli, GatewayStartError, commit_project, deployment
from tests.fakes.upstream import FakeUpstream
from tests.security.conftest import Canary

MODE = "ok-exfil-templates"


def prompt(name: str, template: str) -> str:
    return f"name: {name}\nrouter: exfil\nmessages:\n  - role: system\n    file: {template}\n"


def clean_project(make_project: ProjectFactory, upstream: FakeUpstream) -> Path:
    return make_project(
        routers={"exfil": {"deployments": [deployment("attacker", upstream.url(MODE))]}},
        files={
            "prompts/good.yaml": prompt("good", "templates/good.j2"),
            "prompts/templates/good.j2": "Answer politely.",
        },
    )


def plant_links(project: Path, canary: Canary) -> dict[str, str]:
    """The attacker's files: three prompts whose templates are links. Returns prompt name -> template."""
    templates = project / "prompts" / "templates"
    os.symlink(canary.file, templates / "leak_file.j2")
    os.symlink("/proc/self/environ", templates / "leak_env.j2")
    os.symlink(canary.file.parent, templates / "linked")  # a linked directory
    leaks = {
        "leak_file": "templates/leak_file.j2",
        "leak_env": "templates/leak_env.j2",
        "leak_dir": f"templates/linked/{canary.file.name}",
    }
    for name, template in leaks.items():
        (project / "prompts" / f"{name}.yaml").write_text(prompt(name, template), encoding="utf-8")
    return leaks


def assert_named(output: str, leaks: dict[str, str]) -> None:
    for name, template in leaks.items():
        line = next(
            (ln for ln in output.splitlines() if f"prompts/{name}.yaml:5: file: {template!r}" in ln), None
        )
        assert line is not None, f"no error line for prompts/{name}.yaml:5 in:\n{output}"
        assert "symbolic link" in line


def test_serve_refuses_to_start_on_a_linked_template(
    make_project: ProjectFactory,
    start_gateway: GatewayFactory,
    fake_upstream: FakeUpstream,
    canary: Canary,
) -> None:
    project = clean_project(make_project, fake_upstream)
    leaks = plant_links(project, canary)
    commit_project(project, "innocent-looking templates")
    fake_upstream.clear()
    with pytest.raises(GatewayStartError) as refused:
        start_gateway(project, env=canary.env)
    output = str(refused.value)
    assert "exited with 2" in output
    assert_named(output, leaks)
    assert "Traceback" not in output
    assert not canary.found_in(output)
    assert not canary.found_in(fake_upstream.hits(MODE))


def test_sync_refuses_linked_templates_and_chat_never_serves_them(
    make_project: ProjectFactory,
    start_gateway: GatewayFactory,
    fake_upstream: FakeUpstream,
    canary: Canary,
) -> None:
    project = clean_project(make_project, fake_upstream)
    gw = start_gateway(project, env=canary.env)
    leaks = plant_links(project, canary)
    commit_project(project, "innocent-looking templates")

    done = gw.cli("sync", key=gw.admin_key, check=False)
    assert done.returncode == 1
    assert_named(done.stderr, leaks)
    assert not canary.found_in(done.stdout, done.stderr)

    fake_upstream.clear()
    client = gw.client()
    answer = client.chat.completions.create(model="good", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content  # a regular template still works
    for name in leaks:
        for model in (name, f"prompt:{name}@latest", f"prompt:{name}@1"):
            with gw.http() as http:
                r = http.post(
                    "/v1/chat/completions",
                    json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
                    headers=gw.auth(),
                )
            assert r.status_code == 404, r.text
            assert not canary.found_in(r.text)
    bodies = [h["json"] for h in fake_upstream.hits(MODE)]
    assert any("Answer politely." in str(b) for b in bodies)
    assert not canary.found_in(bodies)
    engine = create_engine(gw.db_url())
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT name, spec, files FROM artifact_versions")).all()
    engine.dispose()
    assert {row[0] for row in stored}.isdisjoint(leaks)
    assert not canary.found_in(stored)
    assert not any(canary.found_in(p.read_bytes()) for p in gw.data_dir.rglob("*") if p.is_file())


def test_working_tree_reads_refuse_links_fifos_and_dotdot(
    make_project: ProjectFactory,
    fake_upstream: FakeUpstream,
    canary: Canary,
    cli_for: Callable[..., Cli],
) -> None:
    """`sync --allow-dirty` reads the working tree: the same refusals, and a FIFO never hangs a read."""
    project = clean_project(make_project, fake_upstream)
    templates = project / "prompts" / "templates"
    os.symlink(canary.file, templates / "dirty.j2")
    os.mkfifo(templates / "pipe.j2")
    files = {
        "leak_dirty": "templates/dirty.j2",
        "leak_fifo": "templates/pipe.j2",
        "leak_up": "../../secret.txt",
    }
    for name, template in files.items():
        (project / "prompts" / f"{name}.yaml").write_text(prompt(name, template), encoding="utf-8")
    cli = cli_for(project, canary.env)
    key = cli.first_admin_key()

    done = cli("sync", "--allow-dirty", "--json", key=key, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    errors = "\n".join(json.loads(done.stdout)["errors"])
    assert (
        "prompts/leak_dirty.yaml:5: file: 'templates/dirty.j2' (prompts/templates/dirty.j2) is a symbolic link"
        in errors
    )
    assert (
        "prompts/leak_fifo.yaml:5: file: 'templates/pipe.j2' (prompts/templates/pipe.j2) is a FIFO" in errors
    )
    assert (
        "prompts/leak_up.yaml:4: messages.0: file must be a relative path inside the prompts/ directory"
        in errors
    )
    assert not canary.found_in(done.stdout, done.stderr)
    listed = cli("list", "prompt", "--json")
    assert '"good"' in listed.stdout and "leak_" not in listed.stdout
