"""docs/registry.md "A new project, step by step", run as a user runs it: the shell block in an empty
directory (git init, commit, the first key, sync), then `opsgate serve`, then the Python block with the
official openai client, which must print what the docs print (issue 12: a newcomer's first answer)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.fakes.gateway import BIN, REPO, GatewayProcess, subprocess_env


def section() -> tuple[str, str, str]:
    text = (REPO / "docs" / "registry.md").read_text(encoding="utf-8")
    body = text.split("\n## A new project, step by step\n", 1)[1].split("\n## ", 1)[0]
    shell, code, printed = re.findall(r"```(?:bash|python)?\n(.*?)```", body, flags=re.S)[:3]
    return shell, code, printed


def test_a_new_project_reaches_its_first_answer_in_the_documented_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shell, code, printed = section()
    project = tmp_path / "support-bot"
    project.mkdir()
    env = subprocess_env(
        {
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "GIT_AUTHOR_NAME": "Me",
            "GIT_AUTHOR_EMAIL": "me@example.com",
            "GIT_COMMITTER_NAME": "Me",
            "GIT_COMMITTER_EMAIL": "me@example.com",
        }
    )
    script = f'set -euo pipefail\n{shell}\nprintf %s "$OPSGATE_API_KEY" > ../api-key\n'
    done = subprocess.run(
        ["bash", "-c", script], cwd=project, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "registered prompt:support_qa@1" in done.stdout and "(production)" in done.stdout
    key = (tmp_path / "api-key").read_text(encoding="utf-8")

    with GatewayProcess(project, data_dir=project / ".opsgate", admin_key=key) as gw:
        gw.start()
        assert not (project / ".opsgate" / "admin.key").exists()  # a key existed: none was written
        monkeypatch.setenv("OPSGATE_API_KEY", key)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code.replace("http://127.0.0.1:8080/v1", gw.base_url), "registry.md", "exec"), {})
        assert out.getvalue().strip() == printed.strip()
        entries = [json.loads(line) for line in gw.cli("audit", "list", "--json").stdout.splitlines()]
    (bootstrap,) = [e for e in entries if e["action"] == "registry.bootstrap"]
    assert bootstrap["actor"].startswith("me@example.com (key key_")
