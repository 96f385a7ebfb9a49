"""Audit entries retried with another encoding: a CLI argument holding bytes that are not UTF-8 (a
`--reason` or `--principal` typed in a Latin-1 terminal) reached the database as a lone surrogate, and
`opsgate promote` died with a UnicodeEncodeError traceback. Such an argument is now refused by position
before anything is read or written (exit 2), and the chain stays intact. Real CLI.
"""

from __future__ import annotations

from collections.abc import Callable

from tests.conftest import ProjectFactory
from tests.fakes.gateway import Cli


def test_an_argument_that_is_not_utf8_is_refused(
    make_project: ProjectFactory, cli_for: Callable[..., Cli]
) -> None:
    project = make_project(
        files={"prompts/hello.yaml": "name: hello\nmessages:\n  - {role: system, content: Hi}\n"}
    )
    cli = cli_for(project)
    admin = cli.first_admin_key()
    assert cli("sync", key=admin).returncode == 0
    before = cli("audit", "list", "--limit", "1000", key=admin).stdout
    for args in (
        ("promote", "prompt:hello@1", "--to", "staging", "--reason", "r\udcff"),  # the byte 0xff
        ("keys", "create", "--name", "x", "--principal", "b\udce9b", "--role", "approver"),
    ):
        done = cli(*args, key=admin)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "is not valid UTF-8" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert cli("audit", "list", "--limit", "1000", key=admin).stdout == before
    assert cli("audit", "verify").returncode == 0
