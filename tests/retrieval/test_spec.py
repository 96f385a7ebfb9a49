"""Index files parse into IndexSpec; mistakes fail at load time with file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.registry.files import load_artifact
from gateway.retrieval.spec import IndexSpec, MarkdownChunker, RouterEmbedder, TokenChunker


def _load(tmp_path: Path, text: str, name: str = "handbook") -> IndexSpec:
    folder = tmp_path / "config" / "indexes"
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / f"{name}.yaml"
    file.write_text(text, encoding="utf-8")
    spec = load_artifact(tmp_path, "index", file).spec
    assert isinstance(spec, IndexSpec)
    return spec


def test_design_example_parses(tmp_path: Path) -> None:
    spec = _load(
        tmp_path,
        "name: handbook\n"
        'source: {type: files, paths: ["docs/**/*.md"]}\n'
        "chunker: {type: tokens, size: 256, overlap: 32}\n"
        "embedder: {type: local}\n",
    )
    assert spec.chunker == TokenChunker(size=256, overlap=32)
    assert spec.source.paths == ["docs/**/*.md"]
    assert spec.distance == "cosine"


def test_other_blocks(tmp_path: Path) -> None:
    spec = _load(
        tmp_path,
        "name: handbook\n"
        "source: {type: jsonl, paths: [data/*.jsonl], id_field: key}\n"
        "chunker: {type: markdown, size: 300, max_level: 2}\n"
        "embedder: {type: router, router: minilm@2}\n"
        "distance: ip\n"
        "metadata: [title, lang]\n",
    )
    assert spec.chunker == MarkdownChunker(type="markdown", size=300, max_level=2)
    assert spec.embedder == RouterEmbedder(type="router", router="minilm@2")
    assert spec.metadata == ["title", "lang"]


def test_unknown_field_names_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, "name: handbook\nsource: {type: files, paths: [a.md]}\nchunkr: {type: tokens}\n")
    assert err.value.message.startswith("config/indexes/handbook.yaml:3: chunkr: unknown field")


def test_overlap_must_be_smaller_than_size(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        _load(
            tmp_path,
            "name: handbook\nsource: {type: files, paths: [a.md]}\nchunker: {type: tokens, size: 64, overlap: 64}\n",
        )
    assert "config/indexes/handbook.yaml:3" in err.value.message
    assert "overlap must be smaller than size" in err.value.message


def test_paths_stay_inside_the_project(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, "name: handbook\nsource: {type: files, paths: [../secrets/*.md]}\n")
    assert "relative to the project directory" in err.value.message


def test_unknown_chunker_type(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, "name: handbook\nsource: {type: files, paths: [a.md]}\nchunker: {type: words}\n")
    assert "config/indexes/handbook.yaml:3: chunker" in err.value.message


def test_name_must_match_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, "name: other\nsource: {type: files, paths: [a.md]}\n")
    assert "must match the file name 'handbook'" in err.value.message


def test_default_types_may_be_left_out_and_survive_a_round_trip() -> None:
    spec = IndexSpec.model_validate({"name": "x", "source": {"paths": ["a.md"]}, "chunker": {"size": 100}})
    assert spec.source.type == "files" and spec.chunker == TokenChunker(size=100)
    stored = spec.model_dump(mode="json", exclude_defaults=True)  # how registries store specs
    assert stored == {"name": "x", "source": {"paths": ["a.md"]}, "chunker": {"size": 100}}
    assert IndexSpec.model_validate(stored) == spec
