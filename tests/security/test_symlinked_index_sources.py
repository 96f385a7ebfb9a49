"""Issue 11, finding 2, for index sources: a glob in `config/indexes/*.yaml` that matches a link to a file
outside the project (or a file beyond a linked directory, or a FIFO) must not put that file into an index,
whose chunks are then served as RAG context and citations. The build stops with one line naming the file
and the spec line of `source.paths`; a `**` glob never descends into a linked directory; `.git`, `.opsgate`
and the data directory are never sources; `..` globs are refused when the file is read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

from tests.conftest import ProjectFactory
from tests.fakes.gateway import Cli, commit_project
from tests.security.conftest import Canary


def index(name: str, paths: str) -> str:
    return f"name: {name}\nsource: {{type: files, paths: {paths}}}\nchunker: {{type: sentences}}\n"


def test_index_sources_never_follow_links_and_never_read_the_data_dir(
    make_project: ProjectFactory, cli_for: Callable[..., Cli], canary: Canary
) -> None:
    outside = canary.file.parent
    (outside / "more.md").write_text(f"# More\nThe secret is {canary.value}.\n", encoding="utf-8")
    project = make_project(
        files={
            "config/indexes/leak.yaml": index("leak", '["docs/**/*.md"]'),
            "config/indexes/through.yaml": index("through", '["docs/linked/*.md"]'),
            "config/indexes/pipe.yaml": index("pipe", '["pipes/*.txt"]'),
            "config/indexes/up.yaml": index("up", '["../*.md"]'),
            "config/indexes/safe.yaml": (
                'name: safe\nsource: {paths: ["**/*.md"], exclude: ["docs/leak.md"]}\nchunker: {type: sentences}\n'
            ),
            "docs/handbook.md": "# Handbook\nRollback is instant.\n",
            "notes/ports.md": "# Ports\nThe gateway listens on port 8080.\n",
        }
    )
    os.symlink(outside / "more.md", project / "docs" / "leak.md")
    os.symlink(outside, project / "docs" / "linked")
    os.symlink(outside, project / "notes" / "linked")  # `**` must not descend into it
    (project / "pipes").mkdir()
    os.mkfifo(project / "pipes" / "feed.txt")
    data_dir = project / "state"  # a data directory inside the project, as some operators keep it
    data_dir.mkdir()
    (data_dir / "spool.md").write_text(f"# Spool\nA logged request said {canary.value}.\n", encoding="utf-8")
    (project / ".opsgate").mkdir()
    (project / ".opsgate" / "notes.md").write_text(f"# Key\n{canary.value}\n", encoding="utf-8")
    commit_project(project, "indexes")
    cli = cli_for(project, {**canary.env, "OPSGATE_DATA_DIR": str(data_dir)})
    key = cli.first_admin_key()

    done = cli("index", "build", "leak", "through", "pipe", "up", "--quiet", key=key, timeout=600)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.splitlines()
    expected = [
        "opsgate: index leak: config/indexes/leak.yaml:2: source.paths: 'docs/leak.md' is a symbolic link",
        "opsgate: index through: config/indexes/through.yaml:2: source.paths: 'docs/linked/more.md' is reached"
        " through docs/linked, a symbolic link",
        "opsgate: index pipe: config/indexes/pipe.yaml:2: source.paths: 'pipes/feed.txt' is a FIFO",
        "opsgate: index up: config/indexes/up.yaml:2: source.files: '../*.md': paths are globs relative to the project",
    ]
    for start in expected:
        assert any(line.startswith(start) for line in lines), f"{start!r} not in:\n{done.stderr}"
    assert "Traceback" not in done.stderr
    assert not canary.found_in(done.stdout, done.stderr)

    built = cli("index", "build", "safe", "--json", "--quiet", key=key, timeout=600)
    assert built.returncode == 0, built.stderr
    assert json.loads(built.stdout)["files"] == 2  # docs/handbook.md and notes/ports.md only
    shown = cli("index", "show", "safe@latest", "--json")
    assert shown.returncode == 0, shown.stderr
    assert not canary.found_in(shown.stdout)
    hits = cli("index", "query", "safe@latest", "what is the secret", "--json")
    assert hits.returncode == 0, hits.stderr
    assert not canary.found_in(hits.stdout)
    listed = cli("index", "list", "--json").stdout
    for name in ("leak", "through", "pipe", "up"):
        entry = next(json.loads(line) for line in listed.splitlines() if json.loads(line)["name"] == name)
        assert entry["versions"] == [], entry
