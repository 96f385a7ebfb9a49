"""Environment that keeps the stack offline. Applied before litellm, tiktoken, HF, chromadb or ragas load.

litellm ships cl100k/o200k tokenizer files but points tiktoken at them only on its first token count;
before that tiktoken would download them, so TIKTOKEN_CACHE_DIR is set here from litellm's package dir
(found without importing litellm, which costs seconds).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

OFFLINE_ENV = {
    "LITELLM_OFFLINE_MODE": "true",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_TELEMETRY_DISABLED": "true",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "ANONYMIZED_TELEMETRY": "False",
    "RAGAS_DO_NOT_TRACK": "true",
    "DO_NOT_TRACK": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # no "Loading weights" bar in CLI output when MiniLM loads
}


def litellm_package_dir() -> Path | None:
    spec = importlib.util.find_spec("litellm")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def apply_offline_env() -> None:
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    pkg = litellm_package_dir()
    if pkg is not None:
        os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(pkg / "litellm_core_utils" / "tokenizers"))
