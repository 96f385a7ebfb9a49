"""Suite files: the DESIGN.md example parses; mistakes name the file, the line and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.evaluation.spec import BaselineGate, ThresholdGate, load_suite

DESIGN_EXAMPLE = """\
name: support_qa
target: prompt:support_qa@staging
dataset: evals/data/support_qa.jsonl  # question, reference, reference_contexts, variables
metrics: [exact_match, rouge, semantic_similarity, context_recall_nonllm, hit_at_4]
gates:
  - {metric: semantic_similarity, min: 0.7}
  - {metric: hit_at_4, min_delta_vs: production, delta: -0.02}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_design_example_parses(tmp_path: Path) -> None:
    loaded = load_suite(write(tmp_path, DESIGN_EXAMPLE))
    spec = loaded.spec
    assert [m.key for m in spec.metrics] == [
        "exact_match",
        "rouge",
        "semantic_similarity",
        "context_recall_nonllm",
        "hit_at_4",
    ]
    assert isinstance(spec.gates[0], ThresholdGate) and spec.gates[0].min == 0.7
    assert isinstance(spec.gates[1], BaselineGate) and spec.gates[1].min_delta_vs == "production"
    assert spec.dataset.path == "evals/data/support_qa.jsonl" and len(loaded.content_hash) == 64


@pytest.mark.parametrize(
    ("change", "where", "message"),
    [
        (("hit_at_4]", "hit_at_four]"), ":4: metrics", "unknown metric 'hit_at_four'"),
        (("min: 0.7}", "min: 0.7, mni: 1}"), ":6: gates.0.threshold.mni", "unknown field"),
        (
            ("  - {metric: semantic_similarity, min: 0.7}\n", "  - {metric: bleu, min: 0.7}\n"),
            ":1:",
            "gate on 'bleu', which is not among the suite's metrics",
        ),
        (
            ("metrics: [exact_match,", "metrics: [{name: rouge, rouge_type: rouge9},"),
            ":4: metrics",
            "metric 'rouge': rouge_type",
        ),
    ],
)
def test_mistakes_name_file_line_and_field(
    tmp_path: Path, change: tuple[str, str], where: str, message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_suite(write(tmp_path, DESIGN_EXAMPLE.replace(*change)), display="evals/support_qa.yaml")
    assert f"evals/support_qa.yaml{where}" in err.value.message and message in err.value.message
