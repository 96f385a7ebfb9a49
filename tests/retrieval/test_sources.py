"""Sources: file globs, the manifest, parsing per type, and all-or-nothing failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.retrieval.sources import ParseFailure, manifest, parse
from gateway.retrieval.spec import IndexSpec
from tests.retrieval.conftest import pdf_bytes


def _spec(**source: object) -> IndexSpec:
    return IndexSpec.model_validate({"name": "t", "source": source, "metadata": ["title", "lang"]})


def _write(root: Path, files: dict[str, str | bytes]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


def test_manifest_globs_excludes_and_hashes(tmp_path: Path) -> None:
    _write(tmp_path, {"docs/a.md": "A", "docs/sub/b.md": "B", "docs/skip.md": "S", "other.md": "O"})
    spec = _spec(type="files", paths=["docs/**/*.md"], exclude=["docs/skip.md"])
    files = manifest(tmp_path, spec)
    assert [f.path for f in files] == ["docs/a.md", "docs/sub/b.md"]
    assert files[0].sha256 == "559aead08264d5795d3909718cdd05abd49572e84fe55590eef31a88a08fdffd"
    assert files[0].size == 1


def test_parse_each_file_type(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "docs/guide.md": "# The Guide\nText here.",
            "docs/page.html": "<html><head><title>Page</title><style>x{}</style></head>"
            "<body><h1>Hi</h1><p>Para &amp; more.</p><script>no()</script></body></html>",
            "docs/notes.txt": "Plain notes.",
            "docs/whales.pdf": pdf_bytes("The blue whale is the largest animal.", title="Whales"),
        },
    )
    spec = _spec(type="files", paths=["docs/*"], root="docs")
    docs = {f.path: parse(tmp_path, spec, f)[0] for f in manifest(tmp_path, spec)}
    assert docs["docs/guide.md"].id == "guide"
    assert docs["docs/guide.md"].metadata == {"title": "The Guide"}
    assert docs["docs/page.html"].text == "Hi\n\nPara & more."
    assert docs["docs/page.html"].metadata == {"title": "Page"}
    assert docs["docs/notes.txt"].text == "Plain notes." and docs["docs/notes.txt"].metadata == {}
    assert docs["docs/whales.pdf"].text == "The blue whale is the largest animal."
    assert docs["docs/whales.pdf"].metadata == {"title": "Whales"}


@pytest.mark.parametrize(
    ("name", "content", "error"),
    [
        ("bad.pdf", b"%PDF-1.4 not really", "not a readable PDF"),
        ("latin.txt", "caf\u00e9".encode("latin-1"), "not UTF-8 text (byte 3)"),
        ("data.csv", "a,b", "unsupported file type '.csv'"),
    ],
)
def test_unparsable_files_fail_whole(tmp_path: Path, name: str, content: bytes, error: str) -> None:
    _write(tmp_path, {name: content})
    spec = _spec(type="files", paths=["*"])
    (entry,) = manifest(tmp_path, spec)
    with pytest.raises(ParseFailure) as err:
        parse(tmp_path, spec, entry)
    assert error in str(err.value)


def test_jsonl_records_and_a_bad_line(tmp_path: Path) -> None:
    good = '{"id": "a 1", "text": "Alpha.", "lang": "en"}\n{"id": 2, "text": "Beta.", "metadata": {"lang": "fr", "x": 1}}\n'
    _write(tmp_path, {"data/good.jsonl": good, "data/bad.jsonl": good + '{"id": "c"}\n'})
    spec = _spec(type="jsonl", paths=["data/*.jsonl"])
    entries = {f.path: f for f in manifest(tmp_path, spec)}
    docs = parse(tmp_path, spec, entries["data/good.jsonl"])
    assert [(d.id, d.text, d.metadata) for d in docs] == [
        ("a_1", "Alpha.", {"lang": "en"}),
        ("2", "Beta.", {"lang": "fr"}),
    ]
    with pytest.raises(ParseFailure) as err:
        parse(tmp_path, spec, entries["data/bad.jsonl"])
    assert str(err.value) == "line 3: 'text' must be a string"


def test_a_file_changed_after_the_manifest_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, {"a.md": "one"})
    spec = _spec(type="files", paths=["*.md"])
    (entry,) = manifest(tmp_path, spec)
    (tmp_path / "a.md").write_text("two", encoding="utf-8")
    with pytest.raises(ParseFailure, match="changed while the index was being built"):
        parse(tmp_path, spec, entry)
