"""Reports of a failing run with a failed call and a baseline: JUnit failure/error/skipped entries, the
HTML comparison and worst cases, the JSON report."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import orjson

from gateway.evaluation.gates import evaluate_gates
from gateway.evaluation.reports import render_html, write_json, write_junit
from gateway.evaluation.runner import ScoreRow, ScoreTable
from gateway.evaluation.service import Outcome, summarise
from tests.evaluation.helpers import run


def outcome() -> Outcome:
    gates = [
        {"metric": "exact_match", "min": 0.9},
        {"metric": "hit_at_4", "min_delta_vs": "production"},
        {"metric": "hit_at_4", "min_delta_vs": "staging"},
        {"type": "pass_rate", "min": 0.1, "case": {"hit_at_4": 1}},
    ]
    result = run(
        {"exact_match": [[0.0], [1.0], [0.0]], "hit_at_4": [[1.0], [0.0], [1.0]]},
        errors={("c2", 0)},
        gates=gates,
    )
    base = ScoreTable(
        "run_base",
        "prompt:qa@1",
        [ScoreRow(f"c{i}", 0, {"exact_match": 1.0, "hit_at_4": 1.0}) for i in range(3)],
    )
    baselines: dict[str, ScoreTable | None] = {"production": base, "staging": None}
    checked = evaluate_gates(result, baselines)
    return Outcome(result, checked, "failed", summarise(result, checked, baselines), baselines)


def test_junit_marks_failed_gates_failed_calls_and_skipped_gates(tmp_path: Path) -> None:
    write_junit(outcome(), tmp_path / "r.xml")
    root = ET.parse(tmp_path / "r.xml").getroot()
    gates, cases = root.findall("testsuite")
    by_name = {c.get("name"): c for c in gates.findall("testcase")}
    assert by_name["failed calls <= 0%"].find("failure") is not None
    assert by_name["exact_match mean >= 0.9"].find("failure") is not None
    assert next(c for n, c in by_name.items() if "vs staging" in str(n)).find("skipped") is not None
    assert (gates.get("tests"), gates.get("failures"), gates.get("skipped")) == ("5", "3", "1")
    errored = next(c for c in cases.findall("testcase") if c.get("name") == "c2")
    assert errored.find("error") is not None and "HTTP 500" in (errored.find("error").get("message") or "")  # type: ignore[union-attr]
    failed = next(c for c in cases.findall("testcase") if c.get("name") == "c1")
    assert failed.find("failure") is not None  # hit_at_4 = 0 under the per-case minimum of 1
    assert (root.get("tests"), root.get("errors")) == ("8", "1")


def test_html_shows_the_comparison_and_the_worst_cases(tmp_path: Path) -> None:
    html = render_html(outcome())
    assert "Candidate vs baseline <code>prompt:qa@1</code>" in html
    assert "Worst cases by exact_match" in html and "ERROR: HTTP 500: boom" in html
    assert html.count("<svg") == 5  # 4 distributions (2 metrics, latency, cost) + the comparison
    write_json(outcome(), tmp_path / "r.json")
    data = orjson.loads((tmp_path / "r.json").read_bytes())
    assert data["status"] == "failed" and data["summary"]["baselines"]["production"]["ref"] == "prompt:qa@1"
    assert [c["error"] for c in data["cases"]] == [None, None, "HTTP 500: boom"]
