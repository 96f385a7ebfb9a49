"""What the dashboard's pages show, read from the registry, the eval store, the request log and the ML
reports (blocking: the routes call these in a thread).

Pages never show a request's text, a caller's principal or an error message (which may quote input):
request rows are shown by key id, status, error type, versions, chunk ids with scores and timings.
"""

from __future__ import annotations

import difflib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import yaml
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from gateway.db.generation import as_utc, utcnow
from gateway.db.models import AuditEntry, EvalRun, RequestLog
from gateway.errors import NotFound
from gateway.evaluation.compare import compare_tables
from gateway.evaluation.reports import comparison_svg, histogram_svg
from gateway.evaluation.store import StoredRun, get_run, load_table
from gateway.ml.tables import MLReport
from gateway.registry import audit
from gateway.registry.promotion import PromotionRecord, PromotionService
from gateway.registry.store import VersionRecord, VersionStore

OPERATOR_WINDOW = timedelta(hours=24)
MAX_ROWS = 20000  # request-log rows one operator page aggregates (newest first)
BUCKET_S = 60  # one point per minute in the time series


# -- diffs --------------------------------------------------------------------------------------------


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def _unified(a: str, b: str, a_name: str, b_name: str) -> str:
    return "".join(difflib.unified_diff(_lines(a), _lines(b), fromfile=a_name, tofile=b_name))


def _spec_yaml(record: VersionRecord) -> str:
    return yaml.safe_dump(record.spec, sort_keys=True, allow_unicode=True, width=100)


@dataclass
class VersionDiff:
    a: str
    b: str
    spec: str  # unified diff of the parsed specs ('' when equal)
    files: list[tuple[str, str]] = field(default_factory=list)  # (path, unified diff) of changed files


def version_diff(a: VersionRecord | None, b: VersionRecord) -> VersionDiff:
    """Spec and referenced files of `b` against `a` (None: against nothing, everything is new)."""
    a_name = a.ref if a else "(nothing)"
    out = VersionDiff(a_name, b.ref, _unified(_spec_yaml(a) if a else "", _spec_yaml(b), a_name, b.ref))
    a_files, b_files = dict(a.files or {}) if a else {}, dict(b.files or {})
    for path in sorted(set(a_files) | set(b_files)):
        before, after = str(a_files.get(path, "")), str(b_files.get(path, ""))
        if before != after:
            out.files.append((path, _unified(before, after, f"{a_name}/{path}", f"{b.ref}/{path}")))
    return out


def diff_lines(text: str) -> list[tuple[str, str]]:
    """A unified diff as (css class, line) pairs for the template."""
    out = []
    for line in text.splitlines():
        if line.startswith(("+++", "---")):
            cls = "hdr"
        elif line.startswith("@@"):
            cls = "hunk"
        elif line.startswith("+"):
            cls = "add"
        elif line.startswith("-"):
            cls = "del"
        else:
            cls = "ctx"
        out.append((cls, line))
    return out


# -- promotions ---------------------------------------------------------------------------------------


@dataclass
class EvalEvidence:
    candidate: StoredRun | None
    current: StoredRun | None
    comparison: dict[str, Any] | None


@dataclass
class PromotionView:
    promotion: PromotionRecord
    candidate: VersionRecord
    current: VersionRecord | None
    diff: VersionDiff
    evals: EvalEvidence
    rule: dict[str, Any]


def _latest_run(session: Session, kind: str, name: str, version: int, suite: str | None) -> str | None:
    q = select(EvalRun.id).where(
        EvalRun.target_kind == kind, EvalRun.target_name == name, EvalRun.target_version == version
    )
    if suite is not None:
        q = q.where(EvalRun.suite == suite)
    return session.scalars(q.order_by(EvalRun.started_at.desc()).limit(1)).first()


def eval_evidence(engine: Engine, candidate: VersionRecord, current: VersionRecord | None) -> EvalEvidence:
    """The candidate's latest eval run, the current version's latest run of the same suite, and their
    comparison (per metric deltas with intervals, the cases that changed most)."""
    # one session at a time: a read transaction held open while another connection waits behind a
    # writer deadlocks SQLite until its busy timeout
    with Session(engine) as s:
        cand_id = _latest_run(s, candidate.kind, candidate.name, candidate.version, None)
    if cand_id is None:
        return EvalEvidence(None, None, None)
    cand = get_run(engine, cand_id)
    with Session(engine) as s:
        cur_id = _latest_run(s, current.kind, current.name, current.version, cand.suite) if current else None
    if cur_id is None:
        return EvalEvidence(cand, None, None)
    cur = get_run(engine, cur_id)
    comparison = compare_tables(load_table(engine, cur_id), load_table(engine, cand_id), top=20)
    return EvalEvidence(cand, cur, comparison.as_dict())


def promotion_view(engine: Engine, service: PromotionService, promotion_id: str) -> PromotionView:
    promotion = service.get(promotion_id)
    store = VersionStore(engine)
    candidate = store.get(promotion.kind, promotion.name, promotion.version)
    if candidate is None:
        raise NotFound(f"{promotion.kind}:{promotion.name}@{promotion.version} is not in the registry")
    current_version = promotion.from_version
    if current_version is None:
        current_version = (
            store.aliases(promotion.kind, promotion.name)
            .get((promotion.kind, promotion.name), {})
            .get(promotion.alias)
        )
    current = store.get(promotion.kind, promotion.name, current_version) if current_version else None
    rule = service.rule_for(promotion.alias)
    return PromotionView(
        promotion,
        candidate,
        current,
        version_diff(current, candidate),
        eval_evidence(engine, candidate, current),
        rule.model_dump() if rule is not None else {},
    )


# -- artifacts ----------------------------------------------------------------------------------------


def eval_runs_of(engine: Engine, kind: str, name: str, limit: int = 50) -> list[StoredRun]:
    with Session(engine) as s:
        ids = s.scalars(
            select(EvalRun.id)
            .where(EvalRun.target_kind == kind, EvalRun.target_name == name)
            .order_by(EvalRun.started_at.desc())
            .limit(limit)
        ).all()
    return [get_run(engine, i) for i in ids]


@dataclass
class RunView:
    run: StoredRun
    baseline: StoredRun | None
    plots: list[str]  # SVG: one distribution per metric (the eval report's histograms)
    comparison: str | None  # SVG: candidate vs baseline means
    worst: list[tuple[str, str, float]]  # (metric, case id, score): the lowest scores


def run_view(engine: Engine, run_id: str) -> RunView:
    """One eval run with its plots: per-metric score distributions and, when it was compared with a
    baseline, the means side by side. Case ids and scores only (no question or answer text)."""
    run = get_run(engine, run_id)
    table = load_table(engine, run_id)
    keys = [*table.metric_keys(), "latency_ms"]
    plots = [histogram_svg(key, table.values(key)) for key in keys if table.values(key)]
    worst = []
    for key in table.metric_keys():
        for case, score in sorted(table.by_case(key).items(), key=lambda cs: cs[1])[:3]:
            worst.append((key, case, score))
    baseline = get_run(engine, run.baseline_run_id) if run.baseline_run_id else None
    comparison = None
    if baseline is not None:
        base = load_table(engine, baseline.id)
        comparison = comparison_svg(
            [(k, _mean(table.values(k)), _mean(base.values(k))) for k in table.metric_keys()]
        )
    return RunView(run, baseline, plots, comparison, worst)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


# -- audit --------------------------------------------------------------------------------------------


@dataclass
class AuditView:
    ok: bool
    entries: int
    problem: str | None
    rows: list[AuditEntry]


def audit_view(engine: Engine, limit: int = 50) -> AuditView:
    result = audit.verify(engine)
    with Session(engine) as s:
        rows = list(s.scalars(select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(limit)))
        s.expunge_all()
    return AuditView(result.ok, result.entries, result.problem, rows)


# -- risk: classic models' reports, prompts' policy decisions ------------------------------------------

REPORT_KINDS = ("drift", "fairness", "accuracy")


def _figure(kind: str, result: dict[str, Any]) -> float | None:
    """One number per report for the time series: drifted share of columns, lowest disparate impact,
    accuracy (classification) or R² (regression) of the main window."""
    if kind == "drift":
        return _num(result.get("share"))
    if kind == "fairness":
        impacts = [_num(a.get("disparate_impact")) for a in (result.get("attributes") or {}).values()]
        found = [i for i in impacts if i is not None]
        return min(found) if found else None
    windows = result.get("windows") or {}
    main: dict[str, Any] = next((w for k, w in windows.items() if k.startswith("last_")), {})
    return _num(main.get("accuracy", main.get("r2")))


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass
class ModelHealth:
    name: str
    version: int
    latest: dict[str, MLReport] = field(default_factory=dict)  # kind -> newest report
    series: dict[str, list[tuple[float, float | None]]] = field(default_factory=dict)  # kind -> (t, y)

    def figure(self, kind: str) -> float | None:
        report = self.latest.get(kind)
        return _figure(kind, report.result) if report else None


def model_health(engine: Engine, limit: int = 5000) -> list[ModelHealth]:
    out: dict[tuple[str, int], ModelHealth] = {}
    with Session(engine) as s:
        rows = s.scalars(
            select(MLReport).where(MLReport.kind.in_(REPORT_KINDS)).order_by(MLReport.ts.desc()).limit(limit)
        ).all()
        for r in reversed(rows):
            health = out.setdefault((r.name, r.version), ModelHealth(r.name, r.version))
            health.latest[r.kind] = r
            health.series.setdefault(r.kind, []).append((as_utc(r.ts).timestamp(), _figure(r.kind, r.result)))
        s.expunge_all()
    return sorted(out.values(), key=lambda h: (h.name, -h.version))


def policy_decisions(engine: Engine, since: datetime) -> dict[str, Counter[tuple[str, str, str]]]:
    """Per first artifact of a request (the prompt or router it named): (check, stage, verdict) counts."""
    out: dict[str, Counter[tuple[str, str, str]]] = defaultdict(Counter)
    for row in _recent_rows(engine, since, (RequestLog.artifacts, RequestLog.decisions)):
        if not row.decisions:
            continue
        head = _version_of(row.artifacts[0]) if row.artifacts else "(unresolved)"
        for d in row.decisions:
            out[head][(str(d.get("check")), str(d.get("stage")), str(d.get("verdict")))] += 1
    return dict(out)


# -- operator: per version figures ------------------------------------------------------------------


def _version_of(artifact: str) -> str:
    """`prompt:docs_qa@3#abcdef123456` -> `prompt:docs_qa@3` (the hash is shown on the lineage page)."""
    return str(artifact).split("#", 1)[0]


# the columns the aggregates read: plain rows (no ORM objects) make a 20,000-row page about 3x cheaper
_FIGURE_COLUMNS = (
    RequestLog.ts,
    RequestLog.artifacts,
    RequestLog.status,
    RequestLog.error_type,
    RequestLog.latency_ms,
    RequestLog.ttft_ms,
    RequestLog.tokens_in,
    RequestLog.tokens_out,
    RequestLog.cost_usd,
    RequestLog.attempts,
)


def _recent_rows(engine: Engine, since: datetime, columns: tuple[Any, ...] = _FIGURE_COLUMNS) -> list[Any]:
    """The newest request-log rows since `since` (at most MAX_ROWS), with the columns figures need."""
    q = select(*columns).where(RequestLog.ts >= since).order_by(RequestLog.ts.desc()).limit(MAX_ROWS)
    with engine.connect() as conn:
        return list(conn.execute(q))


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class VersionTraffic:
    version: str
    requests: int = 0
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    fallbacks: int = 0
    buckets: dict[int, list[float]] = field(default_factory=dict)  # minute -> latencies

    def add(self, row: Any, minute: int, error: str | None, fallback: bool) -> None:
        self.requests += 1
        self.latencies.append(row.latency_ms)
        if row.ttft_ms is not None:
            self.ttfts.append(row.ttft_ms)
        if error is not None:
            self.errors[error] += 1
        self.tokens_in += row.tokens_in or 0
        self.tokens_out += row.tokens_out or 0
        self.cost_usd += row.cost_usd or 0.0
        self.fallbacks += fallback
        self.buckets.setdefault(minute, []).append(row.latency_ms)

    def p(self, q: float) -> float | None:
        return _pct(self.latencies, q)

    def ttft(self, q: float) -> float | None:
        return _pct(self.ttfts, q)


def traffic(engine: Engine, since: datetime | None = None) -> list[VersionTraffic]:
    """Per version of the last 24 hours' rows: each row counts once for every version it used."""
    since = since or utcnow() - OPERATOR_WINDOW
    out: dict[str, VersionTraffic] = {}
    for row in _recent_rows(engine, since):
        minute = int(as_utc(row.ts).timestamp()) // BUCKET_S * BUCKET_S
        error = (row.error_type or str(row.status)) if row.status >= 400 else None
        attempts = row.attempts or []
        fallback = len(attempts) > 1 and any(a.get("ok") for a in attempts)
        for artifact in row.artifacts or ["(unresolved)"]:
            version = _version_of(artifact)
            entry = out.get(version)
            if entry is None:
                entry = out[version] = VersionTraffic(version)
            entry.add(row, minute, error, fallback)
    return sorted(out.values(), key=lambda v: (-v.requests, v.version))


def chart_series(versions: list[VersionTraffic], what: str, top: int = 6) -> dict[str, Any]:
    """uPlot's data for the busiest versions: x = minute timestamps, one series per version
    (requests per minute, or p95 latency in ms)."""
    shown = versions[:top]
    busy = {m for v in shown for m in v.buckets}
    # every minute from one before the first to one after the last: quiet minutes are real zeros, and a
    # single busy minute still gets a time axis of minutes (not a span of years)
    xs = list(range(min(busy) - BUCKET_S, max(busy) + 2 * BUCKET_S, BUCKET_S)) if busy else []
    series = []
    for v in shown:
        points: list[float | None] = []
        for m in xs:
            values = v.buckets.get(m)
            if not values:
                points.append(None if what == "p95" else 0)
            else:
                points.append(len(values) if what == "requests" else _pct(values, 0.95))
        series.append({"label": v.version, "values": points})
    return {"x": xs, "series": series}


# -- request search and lineage ------------------------------------------------------------------


def search_requests(
    engine: Engine, *, request_id: str = "", artifact: str = "", status: str = "", limit: int = 50
) -> list[RequestLog]:
    """Newest first: by request id, by a version (a substring of any artifact of the row, e.g.
    `prompt:kbqa@2`, among the newest MAX_ROWS rows), by outcome (ok, error)."""
    conditions = []
    if request_id:
        conditions.append(RequestLog.id == request_id)
    if status == "error":
        conditions.append(RequestLog.status >= 400)
    elif status == "ok":
        conditions.append(RequestLog.status < 400)
    newest = RequestLog.ts.desc()
    if artifact:  # artifacts is a JSON list: matched here, the same way on every database
        with engine.connect() as conn:
            found = conn.execute(
                select(RequestLog.id, RequestLog.artifacts)
                .where(*conditions)
                .order_by(newest)
                .limit(MAX_ROWS)
            )
            ids = [i for i, arts in found if any(artifact in str(a) for a in arts or [])][:limit]
        conditions = [RequestLog.id.in_(ids)]
    with Session(engine) as s:
        rows = list(s.scalars(select(RequestLog).where(*conditions).order_by(newest).limit(limit)))
        s.expunge_all()
    return rows


def request_row(engine: Engine, request_id: str) -> RequestLog:
    with Session(engine) as s:
        row = s.get(RequestLog, request_id)
        if row is None:
            raise NotFound(f"no request {request_id!r} in the request log")
        s.expunge(row)
    return row


def lineage_versions(artifacts: list[str]) -> list[tuple[str, str]]:
    """(version, hash prefix) per artifact of a request, in the order the flow met them."""
    out = []
    for a in artifacts or []:
        version, _, digest = str(a).partition("#")
        out.append((version, digest))
    return out
