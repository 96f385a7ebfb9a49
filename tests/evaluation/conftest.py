"""Evaluation fixtures: the fake upstream's judge mode, and projects holding the SQuAD subset, the
squad_qa RAG prompt and the repo's eval suites (a real index is built on a gateway's first start)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import GatewayFactory, ProjectFactory
from tests.evaluation.judge import judge_mode
from tests.fakes.gateway import REPO, GatewayProcess
from tests.fakes.upstream import FakeUpstream

SQUAD = REPO / "evals" / "data" / "squad_v2_small"


@pytest.fixture(scope="session")
def judge_upstream(fake_upstream: FakeUpstream) -> FakeUpstream:
    fake_upstream.add_mode("judge", judge_mode)
    return fake_upstream


def squad_files(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The SQuAD questions, the squad_qa prompt, the repo's suites, and the documents of the article the
    test slices ask about (Normans, 39 of the 87 paragraphs: the index builds in half the time)."""
    files = {
        f"evals/data/squad_v2_small/documents/{p.name}": p.read_text(encoding="utf-8")
        for p in sorted((SQUAD / "documents").glob("Normans__*.txt"))
    }
    files["evals/data/squad_v2_small/qa.jsonl"] = (SQUAD / "qa.jsonl").read_text(encoding="utf-8")
    files["prompts/squad_qa.yaml"] = (REPO / "prompts" / "squad_qa.yaml").read_text(encoding="utf-8")
    files["prompts/squad_online.yaml"] = files["prompts/squad_qa.yaml"].replace(
        "name: squad_qa", "name: squad_online"
    ) + ("online_eval: {sample_rate: 1.0, metrics: [faithfulness], judge: judge, window: 2}\n")
    files["evals/squad_small.yaml"] = slice_gates(
        (REPO / "evals" / "squad_small.yaml").read_text(encoding="utf-8")
    )
    return {**files, **(extra or {})}


def slice_gates(suite: str) -> str:
    """The suite's gates are floors for all 293 questions; a slice of a few is too small to hold them, so
    the tests' copy gates on mechanics (low floors) and keeps the baseline gate."""
    head, _, rest = suite.partition("gates:\n")
    tail = rest[rest.index("concurrency:") :]
    gates = (
        "gates:\n  - {metric: hit_at_4, min: 0.25}\n  - {metric: hit_at_4, min_delta_vs: production, delta: -0.02}\n"
        "  - {type: pass_rate, min: 0.1, case: {string_presence: 1}}\n"
    )
    return head + gates + tail


def judge_router(upstream: FakeUpstream, mode: str = "judge") -> dict[str, Any]:
    return {
        "description": "LLM judge for evals (the fake upstream's judge mode)",
        "deployments": [
            {
                "id": "judge",
                "model": "openai/fake-judge",
                "api_base": upstream.url(mode),
                "api_key_env": "FAKE_JUDGE_KEY",
            }
        ],
    }


JUDGE_ENV = {"FAKE_JUDGE_KEY": "sk-fake-judge"}


@pytest.fixture(scope="module")
def squad_project(project_factory: ProjectFactory, judge_upstream: FakeUpstream) -> Path:
    return project_factory(
        routers={"judge": judge_router(judge_upstream), "judge_no": judge_router(judge_upstream, "judge-0")},
        files=squad_files(),
    )


@pytest.fixture(scope="module")
def squad_gateway(squad_project: Path, gateway_factory: GatewayFactory) -> Iterator[GatewayProcess]:
    with gateway_factory(squad_project, env=JUDGE_ENV) as gateway:
        yield gateway


@pytest.fixture
def write_suite(squad_project: Path) -> Callable[[str, str], Path]:
    def write(name: str, text: str) -> Path:
        path = squad_project / "evals" / f"{name}.yaml"
        path.write_text(text, encoding="utf-8")
        return path

    return write
