"""Bad files through the commands that read them (`opsgate serve`, `sync`, `index build`): one
`path:line: field: problem` line each, never a traceback; serve exits 2 as for every other file."""

from __future__ import annotations

from collections.abc import Callable

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import Cli, free_port

BAD_INDEX = "name: bad\nsource: {type: files, paths: ['docs/*.md']}\nchunker: {type: tokens, size: 5}\n"
PROBLEM = "config/indexes/bad.yaml:3: chunker.tokens.size: Input should be greater than or equal to 16"


def test_an_invalid_index_file_is_one_line_in_serve_sync_and_index_build(
    make_project: ProjectFactory, cli_for: Callable[..., Cli]
) -> None:
    cli = cli_for(make_project(files={"config/indexes/bad.yaml": BAD_INDEX, "docs/a.md": "# A\nText.\n"}))
    served = cli("serve", "--host", "127.0.0.1", "--port", str(free_port()), timeout=120)
    assert served.returncode == 2
    assert served.stderr.strip().splitlines() == [f"opsgate: {PROBLEM}"]

    key = cli.first_admin_key()
    synced = cli("sync", key=key)
    assert synced.returncode == 1
    assert [ln for ln in synced.stderr.splitlines() if ln.startswith("error")] == [f"error      {PROBLEM}"]
    assert "registered router:default@1" in synced.stdout  # the valid files still sync

    built = cli("index", "build", "bad", "--quiet", key=key, timeout=600)
    assert built.returncode == 1
    assert built.stderr.strip().splitlines() == [f"opsgate: index bad: {PROBLEM}"]
    for output in (served.stderr, synced.stderr, built.stderr):
        assert "Traceback" not in output


def test_serve_warns_about_a_prompt_naming_a_router_that_does_not_exist(
    make_project: ProjectFactory, start_gateway: GatewayFactory
) -> None:
    lost = "name: lost\nrouter: nope\nmessages:\n  - {role: system, content: Hi.}\n"
    gw = start_gateway(make_project(files={"prompts/lost.yaml": lost}))
    assert (
        "prompts/lost.yaml:2: router: 'nope' is not a router: there is no config/routers/nope.yaml and no"
        " router:nope in the registry; name an existing router or add its file (requests to this prompt will"
        " fail; `opsgate sync` refuses it)"
    ) in gw.output()
