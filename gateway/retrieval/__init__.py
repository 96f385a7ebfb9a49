"""Retrieval indexes, the third governed artifact kind: build (chunk, embed, chromadb + BM25) and query.

    spec.py       config/indexes/<name>.yaml -> IndexSpec (sources, chunker, embedder, distance)
    sources.py    which files, their manifest (sha256 each), their text (txt, md, html, pdf, jsonl)
    chunkers.py   tokens | sentences | markdown
    embedders.py  the packaged MiniLM, or an embedding router (pinned per index version)
    store.py      chroma: one collection per index version (PersistentClient or a chroma server)
    lexical.py    BM25 (bm25s) over the same chunks, versioned with the collection
    search.py     dense | lexical | hybrid (reciprocal rank fusion)
    build.py      `opsgate index build`: no-op when unchanged; registers the version
    records.py    the index_builds table (manifest and build statistics)
    retriever.py  the request path: Retrieval (typed hits) and IndexRetriever
    cli.py        the `opsgate index` commands

Heavy libraries (chromadb, bm25s, torch) load on first use, not on import.
"""
