"""`config/indexes/<name>.yaml`: where an index's documents come from, how they are cut and embedded.

```yaml
name: handbook
source: {type: files, paths: ["docs/**/*.md"]}       # or {type: jsonl, paths: [data/*.jsonl]}
chunker: {type: tokens, size: 200, overlap: 30}      # or {type: sentences} / {type: markdown}
embedder: {type: local}                              # the packaged MiniLM; or {type: router, router: minilm}
distance: cosine                                     # cosine | l2 | ip
metadata: [title]                                    # fields kept beside each chunk
```

This module only parses (it is imported by `opsgate sync` to validate index files); building lives
in `gateway.retrieval.build`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from gateway.yamlspec import NAME_PATTERN, StrictModel


def _type_or(default: str) -> Callable[[Any], str]:
    """A `type:` discriminator that may be left out when it is the default one."""

    def kind(value: Any) -> str:
        found = value.get("type", default) if isinstance(value, dict) else getattr(value, "type", default)
        return str(found)

    return kind


def _relative_glob(pattern: str) -> str:
    if pattern.startswith("/") or ".." in pattern.replace("\\", "/").split("/"):
        raise ValueError(f"{pattern!r}: paths are globs relative to the project directory, without '..'")
    return pattern


class FilesSource(StrictModel):
    """Text files: .txt, .md, .html/.htm and .pdf. One file is one document."""

    type: Literal["files"] = "files"
    paths: list[str] = Field(min_length=1, description="Globs relative to the project dir; ** recurses.")
    exclude: list[str] = Field(default_factory=list, description="Globs of files to leave out.")
    root: str | None = Field(
        None,
        description="Document ids are file paths relative to this directory, without the suffix"
        " (default: the project directory).",
    )

    @model_validator(mode="after")
    def _relative(self) -> FilesSource:
        for pattern in [*self.paths, *self.exclude, *([self.root] if self.root else [])]:
            _relative_glob(pattern)
        return self


class JsonlSource(StrictModel):
    """JSON Lines files: one document a line, `{"id": ..., "text": ..., "metadata": {...}}`."""

    type: Literal["jsonl"]
    paths: list[str] = Field(min_length=1)
    id_field: str = "id"
    text_field: str = "text"

    @model_validator(mode="after")
    def _relative(self) -> JsonlSource:
        for pattern in self.paths:
            _relative_glob(pattern)
        return self


Source = Annotated[
    Annotated[FilesSource, Tag("files")] | Annotated[JsonlSource, Tag("jsonl")],
    Discriminator(_type_or("files")),
]


class TokenChunker(StrictModel):
    """Windows of `size` tokens (tiktoken cl100k) that overlap by `overlap` tokens."""

    type: Literal["tokens"] = "tokens"
    size: int = Field(200, ge=16, le=8192)
    overlap: int = Field(30, ge=0)

    @model_validator(mode="after")
    def _overlap(self) -> TokenChunker:
        if self.overlap >= self.size:
            raise ValueError("overlap must be smaller than size")
        return self


class SentenceChunker(StrictModel):
    """Whole sentences packed into chunks of at most `size` tokens; `overlap` sentences repeat."""

    type: Literal["sentences"]
    size: int = Field(200, ge=16, le=8192)
    overlap: int = Field(1, ge=0, le=10, description="Sentences shared by neighbouring chunks.")


class MarkdownChunker(StrictModel):
    """One chunk per section (headings up to `max_level`), prefixed with its heading path; sections
    longer than `size` tokens are cut into token windows."""

    type: Literal["markdown"]
    size: int = Field(400, ge=16, le=8192)
    overlap: int = Field(30, ge=0)
    max_level: int = Field(3, ge=1, le=6)

    @model_validator(mode="after")
    def _overlap(self) -> MarkdownChunker:
        if self.overlap >= self.size:
            raise ValueError("overlap must be smaller than size")
        return self


Chunker = Annotated[
    Annotated[TokenChunker, Tag("tokens")]
    | Annotated[SentenceChunker, Tag("sentences")]
    | Annotated[MarkdownChunker, Tag("markdown")],
    Discriminator(_type_or("tokens")),
]


class LocalEmbedder(StrictModel):
    """The packaged all-MiniLM-L6-v2 (384 dims), in process."""

    type: Literal["local"] = "local"
    model: Literal["all-MiniLM-L6-v2"] = "all-MiniLM-L6-v2"


class RouterEmbedder(StrictModel):
    """An embedding router served by this opsgate (`name`, `name@alias` or `name@version`). A build
    pins the router version it used, and queries of that index version use the same one."""

    type: Literal["router"]
    router: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}(@[A-Za-z0-9._-]+)?$")
    batch_size: int = Field(64, ge=1, le=2048)


Embedder = Annotated[
    Annotated[LocalEmbedder, Tag("local")] | Annotated[RouterEmbedder, Tag("router")],
    Discriminator(_type_or("local")),
]


class IndexSpec(StrictModel):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    owner: str | None = None
    source: Source
    chunker: Chunker = TokenChunker()
    embedder: Embedder = LocalEmbedder()
    distance: Literal["cosine", "l2", "ip"] = "cosine"
    metadata: list[str] = Field(
        default_factory=list,
        description="Fields kept with each chunk and shown to templates: for files `title`; for JSONL,"
        " keys of the record (or of its `metadata` object).",
    )
