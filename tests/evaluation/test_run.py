"""`opsgate eval run` end to end on a slice of the SQuAD suite: in-process and against a running gateway,
stored runs stamped with versions and hashes, exit codes, baseline regression, compare, and the
promotion rule that requires a passing run."""

from __future__ import annotations

import hashlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from gateway.db.models import EvalResult, EvalRun, RequestLog
from gateway.registry.files import load_artifact
from gateway.registry.store import SourceInfo
from gateway.registry.sync import register_artifact
from tests.evaluation.conftest import JUDGE_ENV
from tests.fakes.gateway import OPSGATE, GatewayProcess, commit_project, subprocess_env

SLICE = "8"
GATE_SUITE = """\
name: squad_gate
target: prompt:squad_qa@production
dataset:
  path: evals/data/squad_v2_small/qa.jsonl
  fields: {reference: reference_answer, references: answers, reference_context_ids: document_id}
  where: {is_impossible: false}
  limit: 8
metrics: [hit_at_4, mrr, {name: string_presence, normalize: true}]
gates:
  - {metric: hit_at_4, min: 0.25}
  - {metric: hit_at_4, min_delta_vs: production, delta: -0.02}
concurrency: 4
"""
WORSE_PROMPT = """\
name: squad_qa
description: A worse version for the regression test (one chunk, and only a high-scoring one).
router: default
params: {temperature: 0}
retrieval: {index: squad, top_k: 1, min_score: 2.0}
messages:
  - role: system
    content: |
      Answer the question using only this context, citing [ids].
      {% for c in context %}[{{ c.id }}] {{ c.text }}
      {% endfor %}
"""


def run_cli(
    project: Path, data_dir: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    extra = {"OPSGATE_PROJECT_DIR": str(project), "OPSGATE_DATA_DIR": str(data_dir), **(env or {})}
    return subprocess.run(
        [OPSGATE, *args],
        cwd=project,
        env=subprocess_env(extra),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def engine_for(url: str) -> Any:
    return create_engine(url)


@pytest.fixture(scope="module")
def in_process(squad_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    out = tmp_path_factory.mktemp("reports")
    data = tmp_path_factory.mktemp("data")
    done = run_cli(
        squad_project,
        data,
        "eval", "run", "evals/squad_small.yaml", "--limit", SLICE, "--no-progress",
        "--json", str(out / "run.json"), "--junit", str(out / "run.xml"), "--html", str(out / "run.html"),
        env=JUDGE_ENV,
    )  # fmt: skip
    engine = engine_for(f"sqlite:///{data / 'opsgate.db'}")
    yield {"done": done, "out": out, "engine": engine, "project": squad_project}
    engine.dispose()


def test_in_process_run_passes_and_is_stamped_with_versions_and_hashes(in_process: dict[str, Any]) -> None:
    done, engine, project = in_process["done"], in_process["engine"], in_process["project"]
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.strip().splitlines()[-1]
    report = orjson.loads((in_process["out"] / "run.json").read_bytes())
    assert report["run_id"] == run_id and report["status"] == "passed" and report["mode"] == "in-process"
    kinds = {v.split(":", 1)[0]: v for v in report["versions"]}
    assert set(kinds) == {"prompt", "router", "index"}
    assert kinds["prompt"].startswith("prompt:squad_qa@1#") and kinds["index"].startswith("index:squad@1#")
    assert len(report["cases"]) == int(SLICE)
    metrics = report["summary"]["metrics"]
    assert metrics["hit_at_4"]["n"] == int(SLICE) and 0.25 <= metrics["hit_at_4"]["mean"] <= 1
    assert 0 < metrics["semantic_similarity"]["mean"] <= 1
    with Session(engine) as s:
        run = s.get(EvalRun, run_id)
        assert run is not None and run.passed and run.status == "passed"
        assert (run.target_kind, run.target_name, run.target_version) == ("prompt", "squad_qa", 1)
        assert run.target_hash and kinds["prompt"].endswith(run.target_hash[:12])
        suite_bytes = (project / "evals" / "squad_small.yaml").read_bytes()
        assert run.suite_hash == hashlib.sha256(suite_bytes).hexdigest()
        qa = (project / "evals/data/squad_v2_small/qa.jsonl").read_bytes().splitlines()
        used = [line for line in qa if not orjson.loads(line)["is_impossible"]][: int(SLICE)]
        assert run.dataset_hash == hashlib.sha256(b"".join(line + b"\n" for line in used)).hexdigest()
        assert sorted(run.versions) == sorted(report["versions"])
        assert run.tool_versions["ragas"] == "0.4.3" and run.created_by == "bootstrap-admin"
        results = s.scalars(select(EvalResult).where(EvalResult.run_id == run_id)).all()
        assert len(results) == int(SLICE)
        ids = {r.request_id for r in results}
        logged = set(s.scalars(select(RequestLog.id).where(RequestLog.id.in_(ids))))
        assert logged == ids  # every case traces to its request log row
        assert all(r.data["citations"] for r in results)


def test_exit_1_when_a_gate_fails_against_a_running_gateway(
    squad_gateway: GatewayProcess, write_suite: Any
) -> None:
    write_suite("squad_strict", GATE_SUITE.replace("name: squad_gate", "name: squad_strict").replace(
        "  - {metric: hit_at_4, min: 0.25}", "  - {metric: string_presence, min: 0.99}"))  # fmt: skip
    done = squad_gateway.cli(
        "eval", "run", "evals/squad_strict.yaml", "--url", squad_gateway.base_url, "--no-progress",
        key=squad_gateway.admin_key, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "[FAIL] string_presence mean >= 0.99" in done.stdout
    run_id = done.stdout.strip().splitlines()[-1]
    with Session(squad_gateway._db()) as s:
        run = s.get(EvalRun, run_id)
        assert run is not None and not run.passed and run.status == "failed"
        assert run.mode == squad_gateway.base_url


def test_exit_2_on_an_invalid_suite_an_unknown_target_or_a_bad_key(
    squad_gateway: GatewayProcess, write_suite: Any
) -> None:
    write_suite("broken", GATE_SUITE.replace("metrics: [hit_at_4,", "metrics: [hit_at_four,"))
    done = squad_gateway.cli("eval", "run", "evals/broken.yaml", key=squad_gateway.admin_key, check=False)
    assert done.returncode == 2
    assert "evals/broken.yaml:" in done.stderr and "unknown metric 'hit_at_four'" in done.stderr
    done = squad_gateway.cli(
        "eval", "run", "evals/squad_small.yaml", "--target", "prompt:nope@1", "--url", squad_gateway.base_url,
        key=squad_gateway.admin_key, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "prompt:nope@1 does not exist" in done.stderr
    done = squad_gateway.cli(
        "eval", "run", "evals/squad_small.yaml", "--url", squad_gateway.base_url, key="sk-wrong", check=False
    )
    assert done.returncode == 2 and "invalid API key" in done.stderr


def register_worse_prompt(gw: GatewayProcess) -> None:
    path = gw.project_dir / "prompts" / "squad_qa.yaml"
    original = path.read_text(encoding="utf-8")
    path.write_text(WORSE_PROMPT, encoding="utf-8")
    try:
        art = load_artifact(gw.project_dir, "prompt", path)
        register_artifact(gw._db(), art, SourceInfo(path="prompts/squad_qa.yaml", dirty=True), actor="test")
    finally:
        path.write_text(original, encoding="utf-8")


@pytest.fixture(scope="module")
def worse_version(squad_gateway: GatewayProcess) -> int:
    register_worse_prompt(squad_gateway)
    return 2


def test_baseline_regression_fails_the_gate_and_compare_shows_it(
    squad_gateway: GatewayProcess, write_suite: Any, worse_version: int
) -> None:
    write_suite("squad_gate", GATE_SUITE)
    gw = squad_gateway
    args = ("eval", "run", "evals/squad_gate.yaml", "--url", gw.base_url, "--no-progress")
    done = gw.cli(*args, "--target", f"prompt:squad_qa@{worse_version}", key=gw.admin_key, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "[FAIL] hit_at_4 mean vs production" in done.stdout
    candidate = done.stdout.strip().splitlines()[-1]
    with Session(gw._db()) as s:
        run = s.get(EvalRun, candidate)
        assert run is not None and run.baseline_run_id is not None
        baseline = s.get(EvalRun, run.baseline_run_id)
        assert (
            baseline is not None and baseline.target_version == 1 and baseline.summary["role"] == "baseline"
        )
    again = gw.cli(*args, "--target", f"prompt:squad_qa@{worse_version}", key=gw.admin_key, check=False)
    assert again.returncode == 1
    with Session(gw._db()) as s:  # the stored baseline run is reused, not run again
        second = s.get(EvalRun, again.stdout.strip().splitlines()[-1])
        assert second is not None and second.baseline_run_id == run.baseline_run_id
    compared = gw.cli("eval", "compare", run.baseline_run_id, candidate, "--json")
    result = orjson.loads(compared.stdout)
    hit = next(m for m in result["metrics"] if m["metric"] == "hit_at_4")
    assert hit["delta"] < 0 and hit["ci_low"] <= hit["delta"] <= hit["ci_high"] and hit["paired"] == 8
    assert result["changed"] and all(c["case_id"] for c in result["changed"])
    text = gw.cli("eval", "compare", run.baseline_run_id, candidate).stdout
    assert "hit_at_4" in text and "95% bootstrap CI" in text


def test_promotion_needs_a_passing_run_of_the_suite_for_that_version(
    squad_gateway: GatewayProcess, write_suite: Any
) -> None:
    gw = squad_gateway
    config = gw.project_dir / "config" / "gateway.yaml"
    settings = yaml.safe_load(config.read_text(encoding="utf-8"))  # a second `governance:` key is refused
    settings["governance"] = {  # production stays protected: the module's online judge (an app) is served it
        "protected_aliases": {
            "staging": {"approvals": 0, "require_eval": {"suite": "squad_promo"}},
            "production": {"approvals": 1},
        }
    }
    config.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    # approval rules are a governed artifact (docs/security.md): the edit applies once committed, synced
    # and promoted; dropping staging's approvals loosens them, so a second admin approves
    commit_project(gw.project_dir, "staging: require a passing squad_promo run, no approvals")
    synced = gw.cli("sync", key=gw.admin_key)
    assert "governance:governance@2" in synced.stdout + synced.stderr, synced.stdout + synced.stderr
    second = _key(gw, "second-admin@example.com", "admin")  # requests; the first admin approves
    request = gw.cli("promote", "governance:governance@2", "--to", "production", key=second)
    gw.cli("approve", request.stdout.strip().splitlines()[-1].split()[0], key=gw.admin_key)
    write_suite("squad_promo", GATE_SUITE.replace("name: squad_gate", "name: squad_promo").replace(
        "  - {metric: hit_at_4, min_delta_vs: production, delta: -0.02}\n", ""))  # fmt: skip
    refused = gw.cli("promote", "prompt:squad_qa@1", "--to", "staging", key=gw.admin_key, check=False)
    assert refused.returncode != 0 and "no passing run of eval suite 'squad_promo'" in refused.stderr
    passed = gw.cli("eval", "run", "evals/squad_promo.yaml", "--target", "prompt:squad_qa@1", "--url", gw.base_url,
                    "--no-progress", key=gw.admin_key, check=False)  # fmt: skip
    assert passed.returncode == 0, passed.stdout + passed.stderr
    run_id = passed.stdout.strip().splitlines()[-1]
    promoted = gw.cli("promote", "prompt:squad_qa@1", "--to", "staging", key=gw.admin_key)
    assert promoted.stdout.strip().splitlines()[-1].startswith("prm_")
    with Session(gw._db()) as s:
        from gateway.db.models import Promotion

        row = s.scalars(select(Promotion).where(Promotion.alias == "staging")).one()
        assert (
            row.state == "applied"
            and {"check": "eval", "suite": "squad_promo", "run": run_id, "passed": True} in row.checks
        )


def test_junit_report_is_valid(in_process: dict[str, Any]) -> None:
    import xml.etree.ElementTree as ET

    root = ET.parse(in_process["out"] / "run.xml").getroot()
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == ["squad_small.gates", "squad_small.cases"]
    total = 0
    for suite in suites:
        cases = suite.findall("testcase")
        total += len(cases)
        assert int(suite.get("tests", "-1")) == len(cases)
        for attr in ("failures", "errors", "skipped"):
            child = {"failures": "failure", "errors": "error", "skipped": "skipped"}[attr]
            assert int(suite.get(attr, "-1")) == sum(1 for c in cases if c.find(child) is not None)
        float(suite.get("time", "x"))
        assert suite.get("timestamp")
        for case in cases:
            assert case.get("name") and case.get("classname") == suite.get("name")
            float(case.get("time", "x"))
            assert {c.tag for c in case} <= {"failure", "error", "skipped", "system-out"}
    assert int(root.get("tests", "-1")) == total
    assert len(suites[1].findall("testcase")) == int(SLICE)
    gate_names = [c.get("name") for c in suites[0].findall("testcase")]
    assert "hit_at_4 mean >= 0.25" in gate_names
    props = {p.get("name"): p.get("value") for p in suites[0].iter("property")}
    assert props["target"].startswith("prompt:squad_qa@1#")


CHROMIUM_HINT = (
    "opsgate: the eval HTML report test needs Debian's chromium: run 'sudo apt-get install -y chromium'"
)


def test_html_report_is_self_contained_and_opens_in_chromium_without_errors(
    in_process: dict[str, Any],
) -> None:
    import re
    import shutil

    html = (in_process["out"] / "run.html").read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # nothing to fetch
    assert html.count("<svg") >= 13  # a distribution per metric, plus the comparison
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail(CHROMIUM_HINT)  # the line `make test` prints when it cannot install chromium
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            args=["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
        )  # fmt: skip
        page = browser.new_page()
        page.on(
            "console",
            lambda m: problems.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None,
        )
        page.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
        page.on("request", lambda r: requests.append(r.url))
        page.goto((in_process["out"] / "run.html").as_uri())
        page.wait_for_load_state("load")
        title = page.title()
        svgs = page.locator("svg").count()
        gates = page.locator("h2", has_text="Gates").count()
        browser.close()
    assert problems == []
    assert all(u.startswith("file://") for u in requests), requests
    assert title.startswith("opsgate eval: squad_small on prompt:squad_qa@1") and svgs >= 13 and gates == 1


def test_online_faithfulness_of_a_rag_prompt_is_judged_on_its_retrieved_chunks(
    squad_gateway: GatewayProcess,
) -> None:
    """The client does not ask for the context; the sampler records the retrieved chunks itself."""
    from gateway.db.models import OnlineEvalScore

    raw = squad_gateway.client().chat.completions.with_raw_response.create(
        model="squad_online", messages=[{"role": "user", "content": "Who was the Norse leader?"}]
    )
    rid = raw.headers["x-opsgate-request-id"]
    assert all("text" not in c for c in raw.parse().model_dump()["citations"])
    deadline = time.monotonic() + 60
    row = None
    while row is None and time.monotonic() < deadline:
        with Session(squad_gateway._db()) as s:
            row = s.scalars(select(OnlineEvalScore).where(OnlineEvalScore.request_id == rid)).first()
        time.sleep(0.2)
    assert row is not None and row.metric == "faithfulness" and row.error is None
    assert row.score == 1.0  # the judge said yes to statements checked against the retrieved chunks
    assert any(v.startswith("index:squad@1#") for v in row.versions)


def _key(gw: GatewayProcess, principal: str, role: str) -> str:
    with gw.http() as http:
        made = http.post(
            "/admin/keys",
            json={"name": principal, "principal": principal, "roles": [role]},
            headers=gw.auth(gw.admin_key),
        )
    assert made.status_code == 201, made.text
    key: str = made.json()["key"]
    gw.wait_for_key(key)
    return key
