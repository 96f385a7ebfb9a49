"""MiniLM used from several threads at once (the local provider runs it off the event loop): counting
tokens beside an `encode` reset the shared tokenizer's padding, and the encode failed with a ValueError
(an intermittent 500 on /v1/embeddings under load, found by bench/soak.py)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from gateway.providers.minilm import MiniLMEmbedder


def test_counting_tokens_beside_encoding_breaks_nothing() -> None:
    embedder = MiniLMEmbedder()
    texts = ["the fjords are deep", "Oslo", "word " * 600, ""]
    tokenizer = embedder.tokenizer()
    assert embedder.count_tokens(texts) == sum(
        len(tokenizer.encode(t, add_special_tokens=True)) for t in texts
    )

    def work(i: int) -> None:
        if i % 2:
            assert embedder.encode(["the fjords are deep", "Oslo"]).shape == (2, 384)
        else:
            assert embedder.count_tokens(["the fjords are deep", "Oslo"]) > 0

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(work, range(400)))
