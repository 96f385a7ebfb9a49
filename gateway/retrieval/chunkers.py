"""Chunkers: a document in, chunks out. Sizes are tiktoken (cl100k) tokens.

Chunk ids are `<document id>#<n>`, so a citation names its document; they hold no whitespace or
brackets, because prompts quote them as `[id]`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import tiktoken

from gateway.retrieval.sources import Document, MetaValue
from gateway.retrieval.spec import Chunker, MarkdownChunker, SentenceChunker, TokenChunker
from gateway.tokens_cost import encoding_for

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])|\n\s*\n")
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


@dataclass(frozen=True)
class Chunk:
    id: str
    document_id: str
    position: int
    text: str
    source: str
    metadata: dict[str, MetaValue] = field(default_factory=dict)


def _encoding() -> tiktoken.Encoding:
    return encoding_for("")


def token_windows(text: str, size: int, overlap: int) -> list[str]:
    enc = _encoding()
    tokens = enc.encode(text, disallowed_special=())
    if len(tokens) <= size:
        return [text.strip()] if text.strip() else []
    out: list[str] = []
    step = size - overlap
    for start in range(0, len(tokens), step):
        piece = enc.decode(tokens[start : start + size]).strip()
        if piece:
            out.append(piece)
        if start + size >= len(tokens):
            break
    return out


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def sentence_chunks(text: str, size: int, overlap: int) -> list[str]:
    enc = _encoding()
    pieces: list[tuple[str, int]] = []
    for sentence in sentences(text):
        n = len(enc.encode(sentence, disallowed_special=()))
        if n > size:  # one overlong sentence: cut it by tokens
            pieces.extend((w, size) for w in token_windows(sentence, size, 0))
        else:
            pieces.append((sentence, n))
    chunks: list[str] = []
    current: list[tuple[str, int]] = []
    for piece in pieces:
        if current and sum(n for _, n in current) + piece[1] > size:
            chunks.append(" ".join(s for s, _ in current))
            kept = current[-overlap:] if overlap else []
            while kept and sum(n for _, n in kept) + piece[1] > size:
                kept = kept[1:]
            current = kept
        current.append(piece)
    if current:
        chunks.append(" ".join(s for s, _ in current))
    return chunks


def markdown_sections(text: str, max_level: int) -> list[tuple[str, str]]:
    """(heading path, body) per section; headings inside fenced code blocks are text."""
    sections: list[tuple[str, str]] = []
    path: list[tuple[int, str]] = []
    body: list[str] = []
    in_fence = False

    def close() -> None:
        content = "\n".join(body).strip()
        if content:
            sections.append((" > ".join(t for _, t in path), content))
        body.clear()

    for line in text.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
        match = None if in_fence else _HEADING.match(line)
        if match and len(match.group(1)) <= max_level:
            close()
            level = len(match.group(1))
            path = [(lv, t) for lv, t in path if lv < level] + [(level, match.group(2))]
        else:
            body.append(line)
    close()
    return sections


def markdown_chunks(text: str, spec: MarkdownChunker) -> list[str]:
    out: list[str] = []
    for heading, body in markdown_sections(text, spec.max_level):
        prefix = f"{heading}\n\n" if heading else ""  # a paragraph of its own: never quoted as a sentence
        budget = max(16, spec.size - len(_encoding().encode(prefix, disallowed_special=())))
        for piece in token_windows(body, budget, min(spec.overlap, budget - 1)):
            out.append(prefix + piece)
    return out


def _texts_for(spec: Chunker) -> Callable[[str], list[str]]:
    if isinstance(spec, TokenChunker):
        return lambda text: token_windows(text, spec.size, spec.overlap)
    if isinstance(spec, SentenceChunker):
        return lambda text: sentence_chunks(text, spec.size, spec.overlap)
    assert isinstance(spec, MarkdownChunker)
    return lambda text: markdown_chunks(text, spec)


def chunk_document(document: Document, spec: Chunker) -> list[Chunk]:
    texts = _texts_for(spec)(document.text)
    return [
        Chunk(f"{document.id}#{i}", document.id, i, text, document.source, dict(document.metadata))
        for i, text in enumerate(texts)
    ]
