"""Reports of a run: JSON (everything), JUnit XML (gates and cases as test cases, for CI), and one
self-contained HTML file (no external resource, no script) with inline SVG plots: metric distributions,
candidate vs baseline per metric, and the worst cases.

Plots are drawn as SVG here rather than with matplotlib: a few dozen lines instead of a large dependency
that writes a font cache under the home directory on first use, and the file stays small and exact.
"""

from __future__ import annotations

import html
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import orjson

from gateway.evaluation.runner import CaseResult, ScoreTable
from gateway.evaluation.service import Outcome

WORST_CASES = 10


def to_json(outcome: Outcome) -> dict[str, Any]:
    run = outcome.run
    return {
        "run_id": run.id,
        "suite": run.suite.spec.name,
        "suite_path": run.suite.path,
        "suite_hash": run.suite.content_hash,
        "target": run.target.ref,
        "versions": run.versions,
        "mode": run.mode,
        "status": outcome.status,
        "passed": outcome.status == "passed",
        "started_at": run.started_at.isoformat(),
        "finished_at": run.finished_at.isoformat(),
        "summary": outcome.summary,
        "cases": [_case_json(r) for r in run.results],
    }


def _case_json(r: CaseResult) -> dict[str, Any]:
    return {
        "id": r.case.id,
        "repeat": r.repeat,
        "question": r.case.question,
        "reference": r.case.reference,
        "answer": r.output.answer,
        "scores": r.scores,
        "passed": r.passed,
        "error": r.output.error,
        "metric_errors": r.metric_errors,
        "request_id": r.output.request_id,
        "latency_ms": r.output.latency_ms,
        "cost_usd": r.output.cost_usd,
        "citations": r.output.citations,
    }


def write_json(outcome: Outcome, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(to_json(outcome), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))


# -- JUnit XML ---------------------------------------------------------------------------------------------


def junit(outcome: Outcome) -> ET.Element:
    run = outcome.run
    name = run.suite.spec.name
    seconds = (run.finished_at - run.started_at).total_seconds()
    root = ET.Element("testsuites", name=f"opsgate eval {name}", time=f"{seconds:.3f}")
    gates = ET.SubElement(root, "testsuite", name=f"{name}.gates", timestamp=run.started_at.isoformat())
    props = ET.SubElement(gates, "properties")
    for key, value in (("run_id", run.id), ("target", run.target.ref), ("versions", ",".join(run.versions))):
        ET.SubElement(props, "property", name=key, value=value)
    for g in outcome.gates:
        case = ET.SubElement(gates, "testcase", classname=f"{name}.gates", name=g.name, time="0")
        if g.skipped:
            ET.SubElement(case, "skipped", message=g.detail)
        elif not g.passed:
            ET.SubElement(case, "failure", message=g.detail, type="gate").text = g.detail
    cases = ET.SubElement(root, "testsuite", name=f"{name}.cases", timestamp=run.started_at.isoformat())
    for r in run.results:
        label = r.case.id if run.suite.spec.repeats == 1 else f"{r.case.id}#{r.repeat}"
        time_s = (r.output.latency_ms or 0) / 1000
        case = ET.SubElement(cases, "testcase", classname=f"{name}.cases", name=label, time=f"{time_s:.3f}")
        if r.output.error:
            ET.SubElement(case, "error", message=r.output.error[:500], type="call").text = r.output.error
        elif r.passed is False:
            ET.SubElement(
                case, "failure", message="below a per-case minimum", type="case"
            ).text = _scores_text(r)
        ET.SubElement(case, "system-out").text = _scores_text(r)
    for suite in (gates, cases):
        tests = suite.findall("testcase")
        suite.set("tests", str(len(tests)))
        suite.set("failures", str(sum(1 for t in tests if t.find("failure") is not None)))
        suite.set("errors", str(sum(1 for t in tests if t.find("error") is not None)))
        suite.set("skipped", str(sum(1 for t in tests if t.find("skipped") is not None)))
        suite.set("time", f"{sum(float(t.get('time', '0')) for t in tests):.3f}")
    for attr in ("tests", "failures", "errors", "skipped"):
        root.set(attr, str(sum(int(s.get(attr, "0")) for s in (gates, cases))))
    return root


def _scores_text(r: CaseResult) -> str:
    return ", ".join(f"{k}={'-' if v is None else f'{v:.4f}'}" for k, v in r.scores.items())


def write_junit(outcome: Outcome, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tree = ET.ElementTree(junit(outcome))
    ET.indent(tree)
    tree.write(path, encoding="utf-8", xml_declaration=True)


# -- HTML --------------------------------------------------------------------------------------------------

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#1d2330;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #dde;padding-bottom:.2rem}
table{border-collapse:collapse;width:100%;margin:.5rem 0}td,th{border:1px solid #dde;padding:.3rem .5rem;
text-align:left;vertical-align:top}th{background:#f4f5f8}.pass{color:#176c2c;font-weight:600}
.fail{color:#b3261e;font-weight:600}.skip{color:#777}.grid{display:flex;flex-wrap:wrap;gap:1rem}
.card{border:1px solid #dde;border-radius:6px;padding:.5rem}code{font-size:12px;word-break:break-all}
.small{font-size:12px;color:#555}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def histogram_svg(
    title: str, values: list[float], *, bins: int = 10, width: int = 260, height: int = 150
) -> str:
    if not values:
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img"><title>{_e(title)}</title><text x="10" y="20">{_e(title)}: no scores</text></svg>'
    lo, hi = min(values), max(values)
    if lo >= 0 and hi <= 1:
        lo, hi = 0.0, 1.0
    span = (hi - lo) or 1.0
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - lo) / span * bins))] += 1
    top = max(counts) or 1
    plot_h, base_y, bar_w = height - 50, height - 25, (width - 20) / bins
    bars = []
    for i, c in enumerate(counts):
        h = plot_h * c / top
        x = 10 + i * bar_w
        bars.append(
            f'<rect x="{x:.1f}" y="{base_y - h:.1f}" width="{bar_w - 2:.1f}" height="{h:.1f}" fill="#4a6fd1">'
            f"<title>{lo + i * span / bins:.3g}-{lo + (i + 1) * span / bins:.3g}: {c}</title></rect>"
        )
    mean = sum(values) / len(values)
    mx = 10 + (mean - lo) / span * (width - 20)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">'
        f"<title>{_e(title)} distribution</title>"
        f'<text x="10" y="16" font-size="13" font-weight="600">{_e(title)}</text>'
        + "".join(bars)
        + f'<line x1="{mx:.1f}" x2="{mx:.1f}" y1="22" y2="{base_y}" stroke="#d14a4a" stroke-dasharray="4 3"/>'
        f'<text x="10" y="{height - 8}" font-size="11">{lo:.3g}</text>'
        f'<text x="{width - 10}" y="{height - 8}" font-size="11" text-anchor="end">{hi:.3g}</text>'
        f'<text x="{width / 2}" y="{height - 8}" font-size="11" text-anchor="middle">mean {mean:.3f} (n={len(values)})</text>'
        "</svg>"
    )


def comparison_svg(rows: list[tuple[str, float | None, float | None]], *, width: int = 700) -> str:
    """Candidate vs baseline mean per metric, as paired horizontal bars (scaled per metric)."""
    row_h = 34
    height = 30 + row_h * len(rows)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">'
        "<title>candidate vs baseline</title>"
        '<rect x="200" y="6" width="12" height="10" fill="#4a6fd1"/><text x="216" y="15" font-size="11">candidate</text>'
        '<rect x="290" y="6" width="12" height="10" fill="#a0a7b8"/><text x="306" y="15" font-size="11">baseline</text>'
    ]
    for i, (name, cand, base) in enumerate(rows):
        y = 26 + i * row_h
        scale = (
            max(abs(cand or 0), abs(base or 0), 1.0 if (cand or 0) <= 1 and (base or 0) <= 1 else 0) or 1.0
        )
        parts.append(f'<text x="190" y="{y + 14}" font-size="12" text-anchor="end">{_e(name)}</text>')
        for j, (value, color) in enumerate(((cand, "#4a6fd1"), (base, "#a0a7b8"))):
            if value is None:
                continue
            w = (width - 280) * abs(value) / scale
            parts.append(
                f'<rect x="200" y="{y + j * 13}" width="{w:.1f}" height="11" fill="{color}"><title>{value:.4f}</title></rect>'
                f'<text x="{204 + w:.1f}" y="{y + j * 13 + 10}" font-size="10">{value:.3f}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def worst_cases(outcome: Outcome, key: str) -> list[CaseResult]:
    scored = [r for r in outcome.run.results if r.output.error or r.scores.get(key) is not None]
    return sorted(scored, key=lambda r: (r.output.error is None, r.scores.get(key) or 0.0))[:WORST_CASES]


def render_html(outcome: Outcome) -> str:
    run, summary = outcome.run, outcome.summary
    keys = list(summary["metrics"])
    status_cls = "pass" if outcome.status == "passed" else "fail"
    table = run.table()
    gates_rows = "".join(
        f'<tr><td>{_e(g.name)}</td><td class="{"skip" if g.skipped else "pass" if g.passed else "fail"}">'
        f"{'skipped' if g.skipped else 'pass' if g.passed else 'FAIL'}</td><td>{_e(g.detail)}</td></tr>"
        for g in outcome.gates
    )
    metric_rows = "".join(
        f"<tr><td>{_e(k)}</td>"
        + "".join(
            f"<td>{_fmt(summary['metrics'][k].get(s))}</td>" for s in ("mean", "median", "p95", "min", "max")
        )
        + f"<td>{summary['metrics'][k]['n']}</td><td>{summary['metrics'][k]['missing']}</td></tr>"
        for k in keys
    )
    hists = "".join(f'<div class="card">{histogram_svg(k, table.values(k))}</div>' for k in keys)
    compare = _comparison_section(outcome, table, keys)
    worst_key = _telling_metric(table, run.metric_keys or keys)
    worst = "".join(
        f"<tr><td><code>{_e(r.case.id)}</code></td><td>{_e(r.case.question)}</td><td>{_e(r.case.reference)}</td>"
        f"<td>{_e(r.output.answer if not r.output.error else 'ERROR: ' + r.output.error)}</td>"
        f"<td class=small>{_e(_scores_text(r))}</td></tr>"
        for r in worst_cases(outcome, worst_key)
    )
    versions = "".join(f"<li><code>{_e(v)}</code></li>" for v in run.versions)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>opsgate eval: {_e(run.suite.spec.name)} on {_e(run.label)}</title><style>{CSS}</style></head>
<body>
<h1>Eval {_e(run.suite.spec.name)} on <code>{_e(run.label)}</code>: <span class="{status_cls}">{_e(outcome.status.upper())}</span></h1>
<p class="small">run <code>{_e(run.id)}</code>, {_e(run.started_at.isoformat())} to {_e(run.finished_at.isoformat())},
{len(run.dataset.cases)} cases x {run.suite.spec.repeats} repeats, {run.errors} failed calls, via {_e(run.mode)};
suite <code>{_e(run.suite.path)}</code> sha256 <code>{_e(run.suite.content_hash[:12])}</code>, dataset sha256
<code>{_e(run.dataset.content_hash[:12])}</code>.</p>
<h2>Versions</h2><ul>{versions}</ul>
<h2>Gates</h2><table><tr><th>gate</th><th>result</th><th>detail</th></tr>{gates_rows}</table>
<h2>Metrics</h2><table><tr><th>metric</th><th>mean</th><th>median</th><th>p95</th><th>min</th><th>max</th><th>n</th><th>missing</th></tr>{metric_rows}</table>
<h2>Distributions</h2><div class="grid">{hists}</div>
{compare}
<h2>Worst cases by {_e(worst_key)}</h2>
<table><tr><th>case</th><th>question</th><th>reference</th><th>answer</th><th>scores</th></tr>{worst}</table>
</body></html>
"""


def _telling_metric(table: ScoreTable, keys: list[str]) -> str:
    """The first metric whose scores differ between cases (sorting by a constant one shows nothing)."""
    return next((k for k in keys if len(set(table.values(k))) > 1), keys[0])


def _comparison_section(outcome: Outcome, table: ScoreTable, keys: list[str]) -> str:
    base = outcome.baseline
    if base is None or base.run_id == outcome.run.id:
        return "<h2>Candidate vs baseline</h2><p>No baseline in this run (add a baseline gate or --baseline).</p>"

    def mean(t: ScoreTable, k: str) -> float | None:
        values = t.values(k)
        return sum(values) / len(values) if values else None

    rows = [(k, mean(table, k), mean(base, k)) for k in keys]
    return (
        f"<h2>Candidate vs baseline <code>{_e(base.label)}</code></h2>"
        f'<div class="card">{comparison_svg(rows)}</div>'
    )


def write_html(outcome: Outcome, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(outcome), encoding="utf-8")
