"""Shared set-up of the retrieval benchmarks: a throwaway registry + chroma, the SQuAD index built once."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gateway.offline import apply_offline_env  # noqa: E402

apply_offline_env()
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the gateway sets it (gateway/app.py)

from gateway.db.engine import make_engine, migrate  # noqa: E402
from gateway.providers.minilm import MiniLMEmbedder  # noqa: E402
from gateway.retrieval.build import BuildResult, IndexBuilder  # noqa: E402
from gateway.retrieval.retriever import IndexLibrary  # noqa: E402
from gateway.retrieval.store import ChromaStore  # noqa: E402

QA_FILE = REPO / "evals" / "data" / "squad_v2_small" / "qa.jsonl"


class Workspace:
    """A registry database and a chroma directory under `root`, for one benchmark run."""

    def __init__(self, root: Path, project_dir: Path = REPO, minilm: MiniLMEmbedder | None = None) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.minilm = minilm or MiniLMEmbedder()
        self.engine = make_engine(f"sqlite:///{root / 'opsgate.db'}")
        migrate(self.engine)
        self.store = ChromaStore(path=root / "chroma", minilm=self.minilm)
        self.builder = IndexBuilder(self.engine, project_dir, self.store, root, self.minilm)
        self.library = IndexLibrary(self.store, root, self.minilm)

    def build(self, name: str) -> BuildResult:
        return self.builder.build(name, actor="bench")

    def reader(self, result: BuildResult) -> Any:
        return self.library.reader(result.record)


def timed(label: str) -> Any:
    class _T:
        def __enter__(self) -> _T:
            self.t = time.perf_counter()
            return self

        def __exit__(self, *exc: object) -> None:
            self.seconds = time.perf_counter() - self.t
            print(f"  {label}: {self.seconds:.1f} s", file=sys.stderr)

    return _T()
