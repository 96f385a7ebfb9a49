"""Source files of an index: which files a spec names, their manifest (sha256 each), and their text.

Parsing is all-or-nothing per file: a file that cannot be read or parsed raises `ParseFailure` and no
part of it is ingested (a JSONL file with one bad line is skipped whole, with that line's number).
Sources are read like every file an author names (gateway/registry/tree.py): only regular files inside
the project, never through a link; a glob that matches a link, a FIFO or a device stops the build.
"""

from __future__ import annotations

import contextlib
import hashlib
import html.parser
import io
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from gateway.errors import ConfigError
from gateway.registry.files import ArtifactFile
from gateway.registry.tree import (
    UnsafePath,
    is_under,
    open_project_file,
    own_dirs,
    read_project_file,
)
from gateway.retrieval.spec import FilesSource, IndexSpec, JsonlSource

TEXT_SUFFIXES = frozenset({".txt", ".md", ".markdown", ".rst"})
HTML_SUFFIXES = frozenset({".html", ".htm"})
PDF_SUFFIXES = frozenset({".pdf"})
MetaValue = str | int | float | bool


class ParseFailure(Exception):
    """A source file that cannot be ingested; the message says why (and where, for JSONL)."""


@dataclass(frozen=True)
class SourceFile:
    path: str  # relative to the project directory, with forward slashes
    sha256: str
    size: int

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "bytes": self.size}


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    source: str
    metadata: dict[str, MetaValue] = field(default_factory=dict)


def safe_id(text: str) -> str:
    """Ids are quoted as `[id]` in prompts: no whitespace or brackets."""
    return re.sub(r"[\s\[\]]+", "_", text.strip()) or "_"


def matching_files(
    project_dir: Path, source: FilesSource | JsonlSource, *, data_dir: Path | None = None
) -> list[str]:
    """Project-relative paths the source's globs match, sorted. Only regular files reached through no
    link are sources: a match that is a link (or lies beyond one), a FIFO or a device raises
    `UnsafePath`; `.git`, `.opsgate` and the data directory are never matched."""
    root = project_dir.resolve()
    excluded = own_dirs(root, data_dir)
    found: dict[str, Path] = {}
    for pattern in source.paths:
        for match in root.glob(pattern):
            rel = match.relative_to(root).as_posix()
            if not is_under(rel, excluded) and not _is_dir_itself(match):
                found[rel] = match
    if isinstance(source, FilesSource):
        for pattern in source.exclude:
            for match in root.glob(pattern):
                found.pop(match.relative_to(root).as_posix(), None)
    for rel in found:
        with contextlib.suppress(FileNotFoundError):  # gone since the glob saw it
            os.close(open_project_file(root, rel))
    return sorted(found)


def _is_dir_itself(path: Path) -> bool:
    """A directory the glob matched (not a link to one: links are refused, loudly)."""
    try:
        return stat.S_ISDIR(path.lstat().st_mode)
    except OSError:
        return True


def file_sha256(project_dir: Path, rel: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with os.fdopen(open_project_file(project_dir.resolve(), rel), "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def manifest(
    project_dir: Path,
    spec: IndexSpec,
    *,
    data_dir: Path | None = None,
    spec_file: ArtifactFile | None = None,
) -> list[SourceFile]:
    """Every file the source names, with its sha256 (cheap: no parsing, no model). A match opsgate
    refuses to read stops the build, naming the file and the spec line of `source.paths`."""
    try:
        return [
            SourceFile(rel, *file_sha256(project_dir, rel))
            for rel in matching_files(project_dir, spec.source, data_dir=data_dir)
        ]
    except UnsafePath as exc:
        problem = f"{exc.reason}; replace it with the file itself, or leave it out with source.exclude"
        raise _source_error(spec_file, exc.filename, problem) from None
    except OSError as exc:
        raise _source_error(spec_file, exc.filename, f"cannot be read: {exc.strerror}") from None


def _source_error(spec_file: ArtifactFile | None, file: object, problem: str) -> ConfigError:
    return ConfigError(
        f"source.paths: {file!r} {problem}",
        path=spec_file.path if spec_file else None,
        line=spec_file.line_of("source", "paths") if spec_file else None,
    )


def parse(project_dir: Path, spec: IndexSpec, entry: SourceFile) -> list[Document]:
    """The documents of one file, or `ParseFailure`."""
    try:
        data = read_project_file(project_dir.resolve(), entry.path)
    except UnsafePath as exc:
        raise ParseFailure(exc.reason) from exc
    except OSError as exc:
        raise ParseFailure(f"cannot read the file: {exc.strerror}") from exc
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        raise ParseFailure("the file changed while the index was being built; build again")
    if isinstance(spec.source, JsonlSource):
        return _jsonl_documents(spec, spec.source, entry.path, data)
    return [_file_document(project_dir, spec, spec.source, entry.path, data)]


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ParseFailure(f"not UTF-8 text (byte {exc.start})") from exc


def _file_document(
    project_dir: Path, spec: IndexSpec, source: FilesSource, path: str, data: bytes
) -> Document:
    suffix = Path(path).suffix.lower()
    if suffix in TEXT_SUFFIXES:
        text = _decode(data)
        title = _markdown_title(text) if suffix in (".md", ".markdown") else None
    elif suffix in HTML_SUFFIXES:
        text, title = html_text(_decode(data))
    elif suffix in PDF_SUFFIXES:
        text, title = pdf_text(data)
    else:
        raise ParseFailure(
            f"unsupported file type {suffix or '(none)'!r}: use .txt, .md, .html or .pdf, or a JSONL source"
        )
    meta: dict[str, MetaValue] = {}
    if title and "title" in spec.metadata:
        meta["title"] = title
    return Document(document_id(project_dir, source, path), text, path, meta)


def document_id(project_dir: Path, source: FilesSource, path: str) -> str:
    rel = Path(path)
    if source.root:
        root = (project_dir / source.root).resolve().relative_to(project_dir.resolve())
        if rel.is_relative_to(root):
            rel = rel.relative_to(root)
    return safe_id(rel.with_suffix("").as_posix())


def _markdown_title(text: str) -> str | None:
    match = re.search(r"^#\s+(.+?)\s*#*\s*$", text, re.MULTILINE)
    return match.group(1) if match else None


class _HTMLText(html.parser.HTMLParser):
    SKIP = frozenset({"script", "style", "noscript", "template", "svg"})
    BLOCK = frozenset(
        {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article", "pre"}
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title: list[str] = []
        self._skip = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self._skip += 1
        elif tag == "title":
            self._in_title = True
        elif tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP and self._skip:
            self._skip -= 1
        elif tag == "title":
            self._in_title = False
        elif tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title.append(data)
        elif not self._skip:
            self.parts.append(data)


def html_text(source: str) -> tuple[str, str | None]:
    parser = _HTMLText()
    parser.feed(source)
    parser.close()
    text = re.sub(r"[ \t\r\f\v]+", " ", "".join(parser.parts))
    text = re.sub(r"\s*\n\s*\n\s*", "\n\n", text).strip()
    title = " ".join("".join(parser.title).split()) or None
    return text, title


def pdf_text(data: bytes) -> tuple[str, str | None]:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        pages = [page.extract_text() or "" for page in reader.pages]
        title = reader.metadata.title if reader.metadata else None
    except (PyPdfError, ValueError, KeyError, TypeError) as exc:
        raise ParseFailure(f"not a readable PDF: {exc}") from exc
    return "\n\n".join(p.strip() for p in pages if p.strip()), (str(title) if title else None)


def _jsonl_documents(spec: IndexSpec, source: JsonlSource, path: str, data: bytes) -> list[Document]:
    """Every line is checked before any document is returned, so a bad line skips the whole file."""
    docs: list[Document] = []
    for lineno, line in enumerate(_decode(data).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ParseFailure(f"line {lineno}: not JSON ({exc})") from exc
        if not isinstance(record, dict):
            raise ParseFailure(f"line {lineno}: each line must be a JSON object")
        ident, text = record.get(source.id_field), record.get(source.text_field)
        if not isinstance(ident, str | int) or isinstance(ident, bool) or str(ident).strip() == "":
            raise ParseFailure(f"line {lineno}: {source.id_field!r} must be a non-empty string or integer")
        if not isinstance(text, str):
            raise ParseFailure(f"line {lineno}: {source.text_field!r} must be a string")
        docs.append(Document(safe_id(str(ident)), text, path, _record_metadata(spec, record)))
    return docs


def _record_metadata(spec: IndexSpec, record: dict[str, Any]) -> dict[str, MetaValue]:
    nested = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
    meta: dict[str, MetaValue] = {}
    for key in spec.metadata:
        value = record.get(key, nested.get(key) if nested else None)
        if value is None:
            continue
        meta[key] = value if isinstance(value, str | int | float | bool) else orjson.dumps(value).decode()
    return meta
