"""Monitoring figures of a model version, from the ML tables: data quality, drift, accuracy, fairness.

`figures()` is pure reading and computing (the CLI, the admin API and the gateway's monitor loop all use
it). `Monitor.check()` also judges: it stores a report per kind, sends an alert (drift, fairness,
accuracy) when a kind goes from healthy to breached, and fires the retraining trigger (an alert of kind
`retrain` to the configured webhooks, and the operator's command the spec names, if any, in the
background: see gateway/ml/retrain.py) at most once per cooldown.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.db.generation import as_utc, lock_key, utcnow
from gateway.ml import accuracy as acc
from gateway.ml.drift import column_drift, dataset_drift
from gateway.ml.fairness import fairness_report
from gateway.ml.model import ServedModel
from gateway.ml.retrain import RetrainRunner
from gateway.ml.tables import MLFeedback, MLPrediction, MLQualityEvent, MLReport

if TYPE_CHECKING:
    from gateway.ml.pipelines.trigger import PipelineTrigger

log = logging.getLogger("opsgate.ml.monitor")
KINDS = ("drift", "fairness", "accuracy")
TIME_WINDOWS = {"1h": timedelta(hours=1), "24h": timedelta(days=1), "7d": timedelta(days=7)}
Deliver = Callable[[str, dict[str, Any]], Awaitable[None]]


def _recent(session: Session, served: ServedModel, limit: int) -> list[MLPrediction]:
    q = (
        select(MLPrediction)
        .where(MLPrediction.name == served.name, MLPrediction.version == served.version)
        .order_by(MLPrediction.ts.desc(), MLPrediction.id.desc())
        .limit(limit)
    )
    return list(session.scalars(q))


def _truths(session: Session, ids: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for start in range(0, len(ids), 900):
        q = (
            select(MLFeedback.prediction_id, MLFeedback.label)
            .where(MLFeedback.prediction_id.in_(ids[start : start + 900]))
            .order_by(MLFeedback.id)
        )
        for pid, label in session.execute(q):
            out[pid] = label  # the newest feedback wins
    return out


def _labelled(session: Session, served: ServedModel, since: datetime) -> list[tuple[MLPrediction, Any]]:
    q = (
        select(MLPrediction, MLFeedback.label)
        .join(MLFeedback, MLFeedback.prediction_id == MLPrediction.id)
        .where(
            MLPrediction.name == served.name, MLPrediction.version == served.version, MLPrediction.ts >= since
        )
        .order_by(MLPrediction.ts.desc(), MLFeedback.id.desc())
        .limit(100_000)
    )
    seen: set[str] = set()
    out: list[tuple[MLPrediction, Any]] = []
    for pred, label in session.execute(q):
        if pred.id not in seen:
            seen.add(pred.id)
            out.append((pred, label))
    return out


def quality_figures(session: Session, served: ServedModel, total_predictions: int) -> dict[str, Any]:
    rules: dict[str, int] = {}
    rejected = flagged = 0
    q = select(MLQualityEvent).where(
        MLQualityEvent.name == served.name, MLQualityEvent.version == served.version
    )
    for event in session.scalars(q):
        if event.action == "reject":
            rejected += 1
        else:
            flagged += len({v["row"] for v in event.violations})
        for v in event.violations:
            key = f"{v['field']}:{v['rule']}"
            rules[key] = rules.get(key, 0) + 1
    return {
        "rejected_requests": rejected,
        "flagged_rows": flagged,
        "scored_rows": total_predictions,
        "violations": dict(sorted(rules.items(), key=lambda kv: -kv[1])),
        "on_violation": served.spec.data_quality.on_violation,
    }


def drift_figures(served: ServedModel, window: list[MLPrediction]) -> dict[str, Any]:
    spec = served.spec
    reference = served.reference()
    if reference is None:
        return {"status": "no_reference", "breached": False}
    if len(window) < spec.drift.min_rows:
        return {
            "status": "insufficient",
            "rows": len(window),
            "min_rows": spec.drift.min_rows,
            "breached": False,
        }
    columns = spec.drift.columns or [c for c in spec.inputs if c in reference.columns]
    tests = []
    for col in columns:
        ref_values = reference[col].where(reference[col].notna(), None).tolist()
        cur_values = [p.inputs.get(col) for p in window]
        numeric = spec.inputs[col].type in ("number", "integer")
        result = column_drift(
            col,
            ref_values,
            cur_values,
            numeric_type=numeric,
            method=spec.drift.method,
            threshold=spec.drift.threshold,
        )
        if result is not None:
            tests.append(result)
    summary = dataset_drift(tests, spec.drift.dataset_share)
    prediction = None
    ref_out = served.reference_outputs()
    if ref_out is not None:
        if served.classes is not None:
            ref_pred, cur_pred, numeric = ref_out.labels or [], [p.label for p in window], False
        else:
            ref_pred, cur_pred, numeric = ref_out.values or [], [p.value for p in window], True
        found = column_drift(
            "prediction",
            list(ref_pred),
            cur_pred,
            numeric_type=numeric,
            method=spec.drift.method,
            threshold=spec.drift.threshold,
        )
        prediction = found.as_dict() if found else None
    return {
        "status": "ok",
        "rows": len(window),
        "reference_rows": len(reference),
        "method": spec.drift.method,
        **summary,
        "columns_detail": {t.column: t.as_dict() for t in tests},
        "prediction_drift": prediction,
        "breached": summary["dataset_drift"],
    }


def accuracy_figures(session: Session, served: ServedModel, now: datetime) -> dict[str, Any]:
    spec = served.spec.accuracy
    pairs = _labelled(session, served, now - TIME_WINDOWS["7d"])
    windows: dict[str, Any] = {}
    newest = pairs[: spec.window]
    windows[f"last_{spec.window}"] = _metrics(served, newest)
    for label, span in TIME_WINDOWS.items():
        cutoff = now - span
        windows[label] = _metrics(served, [(p, t) for p, t in pairs if as_utc(p.ts) >= cutoff])
    main = windows[f"last_{spec.window}"]
    if main["n"] < spec.min_labelled:
        return {
            "status": "insufficient",
            "labelled": main["n"],
            "min_labelled": spec.min_labelled,
            "windows": windows,
            "breached": False,
            "broken": [],
        }
    broken = acc.judge(main, spec.min, spec.max)
    return {
        "status": "ok",
        "labelled": main["n"],
        "windows": windows,
        "broken": broken,
        "breached": bool(broken),
    }


def _metrics(served: ServedModel, pairs: list[tuple[MLPrediction, Any]]) -> dict[str, Any]:
    if not pairs:
        return {"n": 0}
    truths = [t for _, t in pairs]
    if served.classes is None:
        try:
            return acc.regression_metrics(
                [float(t) for t in truths], [float(p.value or 0.0) for p, _ in pairs]
            )
        except (TypeError, ValueError):
            return {"n": len(pairs), "error": "feedback labels are not numbers"}
    assert served.positive is not None
    return acc.classification_metrics(
        truths,
        [p.label for p, _ in pairs],
        [p.score for p, _ in pairs],
        served.classes,
        served.classes[served.positive],
    )


def fairness_figures(session: Session, served: ServedModel, window: list[MLPrediction]) -> dict[str, Any]:
    spec = served.spec.fairness
    if spec is None:
        return {"status": "not_configured", "breached": False}
    rows = window[: spec.window]
    truths = _truths(session, [p.id for p in rows])
    report = fairness_report(
        [p.inputs for p in rows], [p.label for p in rows], [truths.get(p.id) for p in rows], spec
    )
    return {"status": "ok", **report}


def figures(engine: Engine, served: ServedModel, *, now: datetime | None = None) -> dict[str, Any]:
    """Every monitoring figure of one version (blocking: call it in a thread on the event loop)."""
    now = now or utcnow()
    spec = served.spec
    size = max(spec.drift.window, spec.fairness.window if spec.fairness else 0)
    with Session(engine) as session:
        total = int(
            session.scalar(
                select(func.count()).where(
                    MLPrediction.name == served.name, MLPrediction.version == served.version
                )
            )
            or 0
        )
        window = _recent(session, served, size)
        out = {
            "model": served.name,
            "version": served.version,
            "ref": served.ref,
            "computed_at": now.isoformat(),
            "predictions": total,
            "data_quality": quality_figures(session, served, total),
            "drift": drift_figures(served, window[: spec.drift.window]),
            "accuracy": accuracy_figures(session, served, now),
            "fairness": fairness_figures(session, served, window),
        }
    return out


class Monitor:
    """Judge figures, keep reports, alert on transitions to breached, trigger retraining."""

    def __init__(
        self,
        engine: Engine,
        project_dir: Path,
        *,
        commands: Mapping[str, list[str]] | None = None,
        timeout_s: float = 600.0,
        data_dir: Path | None = None,
        config_loader: Callable[[], Any] | None = None,
    ) -> None:
        self.engine = engine
        self.project_dir = project_dir
        self.runner = RetrainRunner(engine, project_dir, commands or {}, timeout_s=timeout_s)
        # a breach also starts the model's approved pipelines (config/pipelines, `trigger:`), once across
        # replicas: gateway/ml/pipelines/trigger.py. Needs the data directory (model store, reports).
        self.pipelines: PipelineTrigger | None = None
        if data_dir is not None:
            from gateway.ml.pipelines.trigger import PipelineTrigger

            self.pipelines = PipelineTrigger(engine, project_dir, data_dir, config_loader)

    async def stop(self) -> None:
        await self.runner.stop()
        if self.pipelines is not None:
            await self.pipelines.stop()

    def _last(self, session: Session, served: ServedModel, kind: str) -> MLReport | None:
        q = (
            select(MLReport)
            .where(MLReport.name == served.name, MLReport.version == served.version, MLReport.kind == kind)
            .order_by(MLReport.id.desc())
            .limit(1)
        )
        return session.scalars(q).first()

    def _record(self, served: ServedModel, found: dict[str, Any]) -> tuple[list[str], bool]:
        """Store one report per kind; returns the kinds newly breached and whether retraining is due.

        Replicas judging the same version at once take turns (a lock row per version), so a breach is
        alerted once and retraining fires once per cooldown, however many gateways run the monitor."""
        try:
            return self._record_locked(served, found)
        except IntegrityError:  # two replicas created the version's lock row at once: it exists now
            return self._record_locked(served, found)

    def _record_locked(self, served: ServedModel, found: dict[str, Any]) -> tuple[list[str], bool]:
        newly: list[str] = []
        spec = served.spec.retrain
        lock = "ml-monitor:" + hashlib.sha1(f"{served.name}@{served.version}".encode()).hexdigest()
        with self.engine.begin() as conn, Session(bind=conn) as session:
            lock_key(conn, lock)
            for kind in KINDS:
                part = found[kind]
                if part.get("status") != "ok":
                    continue
                before = self._last(session, served, kind)
                breached = bool(part.get("breached"))
                if breached and (before is None or not before.breached):
                    newly.append(kind)
                session.add(
                    MLReport(
                        ts=utcnow(),
                        name=served.name,
                        version=served.version,
                        kind=kind,
                        breached=breached,
                        result=orjson.loads(orjson.dumps(part, option=orjson.OPT_SERIALIZE_NUMPY)),
                    )
                )
            due = False
            if spec is not None and any(found[k].get("breached") for k in spec.on):
                last = self._last(session, served, "retrain")
                due = last is None or (utcnow() - as_utc(last.ts)).total_seconds() >= spec.cooldown_s
                if due:
                    reasons = [k for k in spec.on if found[k].get("breached")]
                    session.add(
                        MLReport(
                            ts=utcnow(),
                            name=served.name,
                            version=served.version,
                            kind="retrain",
                            breached=True,
                            result={"reasons": reasons},
                        )
                    )
            session.commit()
        return newly, due

    async def check(self, served: ServedModel, deliver: Deliver) -> dict[str, Any]:
        found = await asyncio.to_thread(figures, self.engine, served)
        newly, retrain = await asyncio.to_thread(self._record, served, found)
        base = {"model": served.name, "version": served.version, "ref": served.ref}
        for kind in newly:
            await deliver(kind, {**base, "summary": summary(kind, found[kind]), "evidence": found[kind]})
        found["alerts"] = newly
        if retrain:
            found["retrain"] = await self.retrain(served, found, deliver)
        if self.pipelines is not None:
            started = await self.pipelines.on_breach(served, found)
            if started:
                found["pipelines"] = started
        return found

    async def retrain(self, served: ServedModel, found: dict[str, Any], deliver: Deliver) -> dict[str, Any]:
        spec = served.spec.retrain
        assert spec is not None
        reasons = [k for k in spec.on if found[k].get("breached")]
        evidence = {
            "model": served.name,
            "version": served.version,
            "ref": served.ref,
            "reasons": reasons,
            "evidence": {k: found[k] for k in reasons},
        }
        await deliver("retrain", evidence)
        result: dict[str, Any] = {"reasons": reasons, "webhook": True}
        if isinstance(spec.command, list):  # registered before the rule: never run
            result["command"] = {
                "status": "refused",
                "error": "this version's spec holds a command instead of naming one of the operator's"
                " ml.retrain_commands (config/gateway.yaml); it does not run",
            }
        elif spec.command:  # the operator's command by that name, in the background; no output comes back
            result["command"] = self.runner.start(served, spec.command, evidence)
        return result


def summary(kind: str, part: dict[str, Any]) -> str:
    if kind == "drift":
        return f"dataset drift: {len(part['drifted_columns'])}/{part['columns']} columns drifted ({', '.join(part['drifted_columns'])})"
    if kind == "accuracy":
        return "accuracy below its floor: " + "; ".join(part["broken"])
    broken = [
        f"{attr}: {', '.join(a['breaches'])}" for attr, a in part["attributes"].items() if a["breaches"]
    ]
    return "fairness breach: " + "; ".join(broken)
