"""The artifact-kind seam: a kind installed as a plugin (an entry point in `opsgate.kinds`) is synced,
versioned, referenced and checked like the built-in ones, with no change to opsgate's code."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from gateway import kinds
from gateway.errors import InvalidRequest
from gateway.registry import refs
from gateway.registry.files import load_artifacts
from gateway.registry.refs import parse_ref
from gateway.registry.store import VersionStore
from gateway.registry.sync import sync
from tests.registry.conftest import GitProject

TOY_MODULE = """
from pydantic import Field

from gateway.kinds import ArtifactKind
from gateway.yamlspec import NAME_PATTERN, StrictModel


class ToySpec(StrictModel):
    name: str = Field(pattern=NAME_PATTERN)
    colour: str
    notes: str | None = None  # a referenced text file

    def referenced_files(self) -> list[str]:
        return [self.notes] if self.notes else []


def no_red(spec: ToySpec) -> list:
    return [(("colour",), "red toys are not allowed")] if spec.colour == "red" else []


KIND = ArtifactKind("toy", "config/toys", "opsgate_toy_kind:ToySpec", text_files=True, checks=("opsgate_toy_kind:no_red",))
"""


@pytest.fixture
def toy_kind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Install the plugin the way pip would: a module and a dist-info with its entry point on sys.path."""
    site = tmp_path_factory.mktemp("site")
    (site / "opsgate_toy_kind.py").write_text(TOY_MODULE)
    dist = site / "opsgate_toy_kind-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: opsgate-toy-kind\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[opsgate.kinds]\ntoy = opsgate_toy_kind:KIND\n")
    sys.path.insert(0, str(site))
    kinds.registry.cache_clear()
    refs._parse_ref.cache_clear()  # parsed references are cached for the life of a process
    try:
        yield
    finally:
        sys.path.remove(str(site))
        sys.modules.pop("opsgate_toy_kind", None)
        kinds.registry.cache_clear()
        refs._parse_ref.cache_clear()


def test_a_plugin_kind_is_synced_versioned_and_referenced(
    toy_kind: None, git_project: Callable[..., GitProject], engine: Engine
) -> None:
    assert "toy" in kinds.names() and "toy" in kinds.synced()
    project = git_project(
        {
            "config/toys/duck.yaml": "name: duck\ncolour: yellow\nnotes: duck.md\n",
            "config/toys/duck.md": "Floats.\n",
        }
    )
    report = sync(engine, project.path, actor="alice@example.com")
    registered = {(r.kind, r.name, r.version) for r in report.registered}
    assert ("toy", "duck", 1) in registered

    record = VersionStore(engine).get("toy", "duck", 1)
    assert record.spec["colour"] == "yellow"
    assert record.files == {"duck.md": "Floats.\n"}  # text_files: stored with the version
    assert str(parse_ref("toy:duck@1")) == "toy:duck@1"

    # a change to the referenced file alone is a new version (its bytes are in the content hash)
    project.write("config/toys/duck.md", "Floats, quacks.\n")
    project.commit("duck notes")
    again = sync(engine, project.path, actor="alice@example.com")
    assert [(r.kind, r.name, r.version) for r in again.registered] == [("toy", "duck", 2)]


def test_a_plugin_kinds_own_check_refuses_a_file_at_its_line(
    toy_kind: None, git_project: Callable[..., GitProject]
) -> None:
    project = git_project({"config/toys/fire.yaml": "name: fire\n# a comment\ncolour: red\n"})
    found, errors = load_artifacts(project.path, kinds.names())
    assert [a.name for a in found if a.kind == "toy"] == []
    assert [e.message for e in errors] == ["config/toys/fire.yaml:3: colour: red toys are not allowed"]


def test_without_the_plugin_the_kind_is_unknown(git_project: Callable[..., GitProject]) -> None:
    assert "toy" not in kinds.names()
    with pytest.raises(InvalidRequest, match="unknown artifact kind 'toy'"):
        parse_ref("toy:duck@1")


def test_built_in_kinds_are_records(tmp_path: Path) -> None:
    """Everything that spelled out the kind list reads the registry: folders, sources, spec classes."""
    assert kinds.names() == ("prompt", "router", "index", "model", "pipeline")
    assert kinds.synced() == ("prompt", "router", "model", "pipeline") and kinds.built() == ("index",)
    assert {k.name: k.folder for k in kinds.registry().values()} == {
        "prompt": "prompts",
        "router": "config/routers",
        "index": "config/indexes",
        "model": "config/models",
        "pipeline": "config/pipelines",
    }
    assert kinds.get("router").spec_class().__name__ == "RouterSpec"
