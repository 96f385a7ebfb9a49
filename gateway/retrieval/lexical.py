"""The lexical side of an index: BM25 (bm25s) over the same chunks as the dense collection.

It is built with the collection and saved under `<data dir>/lexical/<collection name>/`. A replica
that lacks the files (a chroma server shared by several gateways) rebuilds them from the chunk texts
stored in chroma, so chroma stays the one store of an index version.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import orjson

FORMAT = 1  # bump when tokenisation changes: it is part of every index version's content hash
_WORD = re.compile(r"[a-z0-9]+")
_STOP = """a an and are as at be but by for if in into is it no not of on or such that the their then
there these they this to was will with what which who whom when where why how does did do has have had
were been being its from can"""
STOPWORDS = frozenset(_STOP.split())


def _stem(word: str) -> str:
    for suffix, repl in (("ies", "y"), ("ing", ""), ("ed", ""), ("es", ""), ("s", "")):
        if len(word) > len(suffix) + 2 and word.endswith(suffix) and not word.endswith("ss"):
            return word[: -len(suffix)] + repl
    return word


def tokenize(text: str) -> list[str]:
    return [_stem(w) for w in _WORD.findall(text.lower()) if w not in STOPWORDS]


class LexicalIndex:
    def __init__(self, ids: list[str], bm25: Any) -> None:
        self.ids = ids
        self.bm25 = bm25
        self._lock = threading.Lock()  # bm25s keeps per-call state; one query at a time

    @classmethod
    def build(cls, ids: list[str], texts: list[str]) -> LexicalIndex:
        import bm25s

        bm25 = bm25s.BM25()
        bm25.index([tokenize(t) or [""] for t in texts], show_progress=False)
        return cls(list(ids), bm25)

    def save(self, folder: Path) -> None:
        """Write into a folder of this call's own, then rename it into place: a reader (or another
        writer of the same index) never sees a half-written folder."""
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        self.bm25.save(str(tmp), show_progress=False)
        (tmp / "ids.json").write_bytes(orjson.dumps({"format": FORMAT, "ids": self.ids}))
        shutil.rmtree(folder, ignore_errors=True)
        try:
            tmp.rename(folder)
        except OSError:  # another writer renamed the same content into place first
            shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def load(cls, folder: Path) -> LexicalIndex | None:
        """The saved index, or None when it is missing or of another format."""
        import bm25s

        try:
            meta = orjson.loads((folder / "ids.json").read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return None
        if meta.get("format") != FORMAT:
            return None
        try:
            bm25 = bm25s.BM25.load(str(folder), show_progress=False)
        except (OSError, ValueError):  # a folder removed under us: rebuilt by the caller
            return None
        return cls(list(meta["ids"]), bm25)

    def search(self, query: str, k: int) -> list[tuple[str, float]]:
        tokens = tokenize(query)
        if not tokens or not self.ids:
            return []
        with self._lock:
            docs, scores = self.bm25.retrieve([tokens], k=min(k, len(self.ids)), show_progress=False)
        return [(self.ids[int(d)], float(s)) for d, s in zip(docs[0], scores[0], strict=True) if s > 0]
