"""Fusion and lexical search, without a model."""

from __future__ import annotations

from pathlib import Path

from gateway.retrieval.lexical import LexicalIndex, tokenize
from gateway.retrieval.search import rrf


def test_rrf_scales_to_one_and_orders() -> None:
    fused = rrf([["a", "b", "c"], ["b", "a", "d"]], k=60)
    assert [i for i, _ in fused] == ["a", "b", "c", "d"]
    assert fused[0][1] == (1 / 61 + 1 / 62) / (2 / 61)
    assert rrf([["x"], ["x"]])[0] == ("x", 1.0)


def test_tokenize_stems_and_drops_stopwords() -> None:
    assert tokenize("The Normans were raiding cities in France!") == ["norman", "raid", "city", "france"]


def test_lexical_index_search_save_load(tmp_path: Path) -> None:
    index = LexicalIndex.build(
        ["a#0", "b#0", "c#0"], ["Cats sit on mats.", "Dogs bark loudly.", "Cats and dogs."]
    )
    assert [i for i, _ in index.search("barking dogs", 3)] == ["b#0", "c#0"]
    assert index.search("the of", 3) == []
    index.save(tmp_path / "lex")
    loaded = LexicalIndex.load(tmp_path / "lex")
    assert loaded is not None
    assert loaded.search("cats", 2) == index.search("cats", 2)
    assert LexicalIndex.load(tmp_path / "missing") is None
