"""Scoring one case with a legacy ragas metric (the only API with the non-LLM metrics, see OFFLINE.md).

Every ragas metric is built by our factories with its `llm=` or `embeddings=` given explicitly, so ragas
never builds an OpenAI client of its own; tracking is off (RAGAS_DO_NOT_TRACK, gateway.offline).
"""

from __future__ import annotations

import math
from typing import Any

from gateway.offline import apply_offline_env


def ragas_metric(cls_name: str, **kwargs: Any) -> Any:
    """A legacy ragas metric class by name (imported lazily: `import ragas` costs seconds)."""
    apply_offline_env()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import ragas.metrics as legacy

        return getattr(legacy, cls_name)(**kwargs)


async def score_sample(metric: Any, **fields: Any) -> float | None:
    from ragas.dataset_schema import SingleTurnSample

    value = await metric.single_turn_ascore(SingleTurnSample(**fields))
    if value is None:
        return None
    score = float(value)
    return None if math.isnan(score) else score
