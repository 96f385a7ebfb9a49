"""Artifact files: where each kind lives, how a file and the files it references are read, and the one
line (`path:line: field: problem`) each kind of bad file gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import kinds
from gateway.errors import ConfigError
from gateway.registry.files import load_artifact, load_artifacts
from gateway.registry.git import GitRepo
from gateway.registry.sync import git_tree
from tests.conftest import ProjectFactory
from tests.fakes.gateway import commit_project

GREET = "name: greet\ndescription: Greets.\nmessages:\n  - role: system\n    file: templates/greet.j2\n"


def errors_of(project: Path) -> list[str]:
    _, errors = load_artifacts(project, kinds.synced())
    return sorted(e.message for e in errors)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "file: 'templates/greet.j2' (prompts/templates/greet.j2) does not exist"),
        (b"", "file: 'templates/greet.j2' (prompts/templates/greet.j2) is empty"),
        (
            b"caf\xe9 {{ who }}",
            "file: 'templates/greet.j2' (prompts/templates/greet.j2) is not UTF-8 text (byte 3)",
        ),
    ],
    ids=["missing", "empty", "not-utf8"],
)
def test_a_bad_referenced_file_names_its_path_and_the_line_that_references_it(
    make_project: ProjectFactory, content: bytes | None, problem: str
) -> None:
    project = make_project(files={"prompts/greet.yaml": GREET}, git=False)
    if content is not None:
        (project / "prompts" / "templates").mkdir()
        (project / "prompts" / "templates" / "greet.j2").write_bytes(content)
    assert errors_of(project) == [f"prompts/greet.yaml:5: {problem}"]


def test_a_referenced_file_missing_from_git_is_named_with_its_line(make_project: ProjectFactory) -> None:
    project = make_project(files={"prompts/greet.yaml": GREET, ".gitignore": "prompts/templates/\n"})
    (project / "prompts" / "templates").mkdir()
    (project / "prompts" / "templates" / "greet.j2").write_text("Hello {{ who }}.", encoding="utf-8")
    repo = GitRepo(project)
    _, errors = load_artifacts(project, kinds.synced(), git_tree(repo, repo.head()))
    assert [e.message for e in errors] == [
        f"prompts/greet.yaml:5: file: 'templates/greet.j2' (prompts/templates/greet.j2) is not in git commit"
        f" {repo.head()[:12]} (commit it, or sync with --allow-dirty to register the working tree)"
    ]


def test_an_empty_or_non_utf8_spec_file_is_one_line(make_project: ProjectFactory) -> None:
    project = make_project(files={"prompts/empty.yaml": "\n"}, git=False)
    (project / "prompts" / "latin.yaml").write_bytes(b"name: latin\ndescription: caf\xe9\n")
    assert errors_of(project) == [
        "prompts/empty.yaml: the file is empty; it must hold the artifact's spec",
        "prompts/latin.yaml: the file is not valid UTF-8 (byte 28)",
    ]


def test_x_yaml_beside_x_yml_is_refused_and_neither_loads(make_project: ProjectFactory) -> None:
    hello = "name: hello\nmessages:\n  - {role: system, content: Hi.}\n"
    project = make_project(files={"prompts/hello.yaml": hello, "prompts/hello.yml": hello}, git=False)
    found, errors = load_artifacts(project, kinds.synced())
    assert "hello" not in {a.name for a in found}
    assert [e.message for e in errors] == [
        "prompts/hello.yml:1: prompts/hello.yaml and prompts/hello.yml both define 'hello'; keep one of them"
    ]
    with pytest.raises(ConfigError, match="both define 'hello'"):
        load_artifact(project, "prompt", project / "prompts" / "hello.yaml")


def test_duplicate_keys_are_refused_with_their_line(make_project: ProjectFactory) -> None:
    twice = "name: twice\nrouter: default\nmessages:\n  - {role: system, content: Hi.}\nrouter: other\n"
    project = make_project(files={"prompts/twice.yaml": twice}, git=False)
    assert errors_of(project) == [
        "prompts/twice.yaml:5: router: duplicate key (also on line 2); YAML would keep only the last one"
        " silently: remove one"
    ]


def test_git_and_working_tree_read_the_same_content(make_project: ProjectFactory) -> None:
    project = make_project(files={"prompts/greet.yaml": GREET, "prompts/templates/greet.j2": "Hi {{ who }}."})
    commit_project(project, "greet")
    repo = GitRepo(project)
    from_git, _ = load_artifacts(project, kinds.synced(), git_tree(repo, repo.head()))
    from_tree, _ = load_artifacts(project, kinds.synced())
    assert {(a.kind, a.name, a.content_hash) for a in from_git} == {
        (a.kind, a.name, a.content_hash) for a in from_tree
    }
    assert next(a for a in from_git if a.name == "greet").referenced == {
        "templates/greet.j2": b"Hi {{ who }}."
    }
