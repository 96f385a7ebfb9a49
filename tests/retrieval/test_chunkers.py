"""Chunkers: exact windows, sentence packing and markdown sections (sizes in cl100k tokens)."""

from __future__ import annotations

from gateway.retrieval.chunkers import (
    chunk_document,
    markdown_chunks,
    markdown_sections,
    sentence_chunks,
    sentences,
    token_windows,
)
from gateway.retrieval.sources import Document
from gateway.retrieval.spec import MarkdownChunker, SentenceChunker, TokenChunker
from gateway.tokens_cost import encoding_for


def test_token_windows_size_and_overlap() -> None:
    enc = encoding_for("")
    text = " ".join(f"w{i}" for i in range(300))
    tokens = enc.encode(text)
    windows = token_windows(text, 100, 20)
    encoded = [enc.encode(w) for w in windows]
    assert all(len(e) <= 100 for e in encoded)
    assert len(windows) == 1 + -(-(len(tokens) - 100) // 80)  # ceil((n - size) / step) more windows
    assert windows[0].split()[-1] in windows[1]  # overlap carries the tail of one window into the next
    assert windows[-1].endswith("w299")


def test_short_text_is_one_chunk_and_blank_is_none() -> None:
    assert token_windows("  Hello world.  ", 100, 10) == ["Hello world."]
    assert token_windows(" \n ", 100, 10) == []


def test_sentences_split_on_end_punctuation_and_paragraphs() -> None:
    assert sentences("One is here. Two (2) too! Three?\n\nFour") == [
        "One is here.",
        "Two (2) too!",
        "Three?",
        "Four",
    ]
    assert sentences("Version 1.5 is out. e.g. lower case stays.") == [
        "Version 1.5 is out. e.g. lower case stays."
    ]


def test_sentence_chunks_pack_and_overlap() -> None:
    text = "Alpha one two three. Beta four five six. Gamma seven eight nine. Delta ten eleven twelve."
    chunks = sentence_chunks(text, 12, 1)
    assert chunks == [
        "Alpha one two three. Beta four five six.",
        "Beta four five six. Gamma seven eight nine.",
        "Gamma seven eight nine. Delta ten eleven twelve.",
    ]
    assert sentence_chunks(text, 12, 0) == [
        "Alpha one two three. Beta four five six.",
        "Gamma seven eight nine. Delta ten eleven twelve.",
    ]


def test_markdown_sections_follow_headings_not_code() -> None:
    text = "# Guide\nIntro.\n## Install\nRun make.\n```\n# not a heading\n```\n### Deep\nDeep text.\n## Use\nCall it."
    assert markdown_sections(text, 2) == [
        ("Guide", "Intro."),
        ("Guide > Install", "Run make.\n```\n# not a heading\n```\n### Deep\nDeep text."),
        ("Guide > Use", "Call it."),
    ]
    chunks = markdown_chunks(text, MarkdownChunker(type="markdown", size=100, max_level=3))
    assert chunks[2] == "Guide > Install > Deep\n\nDeep text."


def test_chunk_ids_and_metadata() -> None:
    doc = Document("docs/guide", "First sentence. Second sentence.", "docs/guide.md", {"title": "Guide"})
    chunks = chunk_document(doc, SentenceChunker(type="sentences", size=16, overlap=0))
    assert [(c.id, c.position, c.text) for c in chunks] == [
        ("docs/guide#0", 0, "First sentence. Second sentence.")
    ]
    assert chunks[0].metadata == {"title": "Guide"} and chunks[0].source == "docs/guide.md"
    assert chunk_document(doc, TokenChunker(size=16, overlap=0))[0].document_id == "docs/guide"
