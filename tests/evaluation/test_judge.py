"""LLM-judged metrics wired to a judge router served by opsgate, whose upstream is the fake judge mode."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.db.models import RequestLog
from gateway.errors import ConfigError
from gateway.evaluation.service import RunRequest, execute
from gateway.evaluation.spec import load_suite
from gateway.settings import Settings
from tests.conftest import ProjectFactory
from tests.evaluation.conftest import JUDGE_ENV, judge_router
from tests.fakes.upstream import FakeUpstream

CASES = [
    {
        "id": "capital",
        "question": "What is the capital of Germany?",
        "reference": "Berlin",
        "reference_contexts": ["Berlin is the capital of Germany. Paris is the capital of France."],
    },
    {
        "id": "river",
        "question": "Which river flows through Germany and the Netherlands?",
        "reference": "The Rhine",
        "reference_contexts": ["The Rhine flows through Germany and the Netherlands."],
    },
]
SUITE = """\
name: judged
target: router:default
messages:
  - role: system
    content: "{{ reference_contexts | join(' ') }}"
  - role: user
    content: "{{ question }}"
dataset: evals/data/judged.jsonl
judge: JUDGE
metrics: [faithfulness, response_relevancy, context_precision, context_recall, {name: string_presence, normalize: true}]
concurrency: 2
"""


@pytest.fixture(scope="module")
def judged_project(project_factory: ProjectFactory, judge_upstream: FakeUpstream) -> Path:
    dataset = "\n".join(orjson.dumps(c).decode() for c in CASES) + "\n"
    return project_factory(
        routers={"judge": judge_router(judge_upstream), "judge_no": judge_router(judge_upstream, "judge-0")},
        files={
            "evals/data/judged.jsonl": dataset,
            "evals/judged.yaml": SUITE.replace("JUDGE", "judge"),
            "evals/judged_no.yaml": SUITE.replace("JUDGE", "judge_no").replace(
                "name: judged", "name: judged_no"
            ),
        },
    )


def run(project: Path, data_dir: Path, suite: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    from gateway.app import create_app, prepare_database

    for k, v in JUDGE_ENV.items():
        monkeypatch.setenv(k, v)
    settings = Settings(project_dir=project, data_dir=data_dir)
    engine = prepare_database(settings)
    key = (data_dir / "admin.key").read_text(encoding="utf-8").strip()
    request = RunRequest(project / "evals" / suite, project, key, app=lambda: create_app(settings))
    try:
        return asyncio.run(execute(request, engine)), engine
    finally:
        engine.dispose()


def test_judged_metrics_score_through_the_opsgate_judge_router(
    judged_project: Path, judge_upstream: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    judge_upstream.clear()
    outcome, engine = run(judged_project, tmp_path, "judged.yaml", monkeypatch)
    means = {k: v["mean"] for k, v in outcome.summary["metrics"].items()}
    assert means["faithfulness"] == 1.0 and means["context_recall"] == 1.0
    assert means["context_precision"] == pytest.approx(1.0, abs=1e-6)
    assert 0 < means["response_relevancy"] <= 1
    assert means["string_presence"] == 1.0
    assert outcome.status == "passed" and outcome.run.judge is not None
    assert outcome.run.judge.ref.startswith("router:judge@1#")
    hits = judge_upstream.hits("judge", "chat/completions")
    assert hits and all(h["json"]["model"] == "fake-judge" for h in hits)
    assert all(h["json"].get("response_format") == {"type": "json_object"} for h in hits)
    with Session(engine) as s:  # every judge call went through the gateway and is in its request log
        logged = s.scalars(select(RequestLog).where(RequestLog.model == "judge")).all()
    assert len(logged) == len(hits) and all(r.status == 200 for r in logged)


def test_the_judges_verdict_reaches_the_score(
    judged_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcome, _ = run(judged_project, tmp_path, "judged_no.yaml", monkeypatch)
    means = {k: v["mean"] for k, v in outcome.summary["metrics"].items()}
    assert means["faithfulness"] == 0.0 and means["context_recall"] == 0.0
    assert means["context_precision"] == pytest.approx(0.0, abs=1e-6) and means["response_relevancy"] == 0.0


def test_a_judge_metric_without_a_judge_is_refused_at_load(tmp_path: Path) -> None:
    suite = tmp_path / "nojudge.yaml"
    suite.write_text(SUITE.replace("judge: JUDGE\n", ""), encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        load_suite(suite, display="evals/nojudge.yaml")
    assert "metric 'faithfulness' is judged by an LLM: set `judge: <router>`" in refused.value.message
    assert "never lets ragas call a provider on its own" in refused.value.message
