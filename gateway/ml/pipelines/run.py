"""`opsgate pipeline run NAME`: train, validate against the gates, register a candidate, report.

The pipeline version run is a registered one (`NAME@production`, `NAME@3`; by default the production
version, else the newest), so what runs is what the registry holds, content-hashed. On success the
candidate is registered through gateway/ml/register.py (skops file, reference, spec) like any model
version: content-hashed, its files in the model store, with the pipeline version, the data hash and the
metrics as lineage (in its tags and description, and in the run's report); no alias moves: the candidate
goes through promotion like any version. A failed gate registers nothing and the result names it.
The report (JSON and HTML, drawn with the eval reports' SVG) compares the candidate with the current
production version of the model on the same test rows.
"""

from __future__ import annotations

import logging
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from gateway.db.generation import utcnow
from gateway.errors import ConfigError, OpsgateError
from gateway.ml.config import PipelinesConfig
from gateway.ml.pipelines import bounded, catalog, data, train
from gateway.ml.pipelines.spec import PipelineSpec
from gateway.registry.store import VersionRecord, VersionStore

log = logging.getLogger("opsgate.ml.pipelines")
RUN_KIND = "pipeline_run"
STAGES = ("load", "clean", "split", "train", "validate", "register", "report")
Progress = Callable[[str], None]


@dataclass
class RunResult:
    run_id: str
    pipeline: str  # pipeline:NAME@V
    status: str  # passed | failed | error | timeout
    failed_gates: list[str] = field(default_factory=list)
    candidate: str | None = None  # model:NAME@V#hash
    report: dict[str, Any] = field(default_factory=dict)
    report_paths: list[str] = field(default_factory=list)
    error: str | None = None


def resolve(engine: Engine, target: str) -> VersionRecord:
    """NAME, NAME@VERSION or NAME@ALIAS (default: production, else the newest version)."""
    name, _, selector = target.removeprefix("pipeline:").partition("@")
    store = VersionStore(engine)
    records = store.versions("pipeline", name)
    if not records:
        raise ConfigError(
            f"pipeline:{name} is not registered: commit config/pipelines/{name}.yaml and run `opsgate sync`"
        )
    aliases = store.aliases("pipeline", name).get(("pipeline", name), {})
    if not selector:
        version = aliases.get("production", records[-1].version)
    elif selector.isdigit():
        version = int(selector)
    else:
        if selector not in aliases:
            raise ConfigError(f"pipeline:{name} has no alias {selector!r} (aliases: {aliases or 'none'})")
        version = aliases[selector]
    for r in records:
        if r.version == version:
            return r
    raise ConfigError(f"pipeline:{name} has no version {version}")


@contextmanager
def _stages(show: bool) -> Iterator[Progress]:
    """A progress bar over the stages (rich, on the terminal) or nothing."""
    if not show:
        yield lambda stage: None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[bold]{task.description:<10}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), transient=False,
    ) as bar:  # fmt: skip
        task = bar.add_task("pipeline", total=len(STAGES))
        done = 0

        def step(stage: str) -> None:
            nonlocal done
            bar.update(task, description=stage, completed=min(done, len(STAGES)))
            done += 1

        yield step
        bar.update(task, description="done", completed=len(STAGES))


def dask_address(config: PipelinesConfig, egress: Any) -> str | None:
    """The operator's scheduler (checked against egress.hosts), or None: the caller starts a local cluster."""
    address = config.dask_scheduler
    if address is None:
        return None
    host = address.split("://", 1)[1]
    problem = egress.url_problem(f"http://{host}") if egress is not None else None
    if problem:
        raise ConfigError(f"ml.pipelines.dask_scheduler: {problem}")
    return address


@contextmanager
def dask_cluster(config: PipelinesConfig, egress: Any) -> Iterator[str]:
    address = dask_address(config, egress)
    if address is not None:
        yield address
        return
    from distributed import LocalCluster

    with LocalCluster(  # type: ignore[no-untyped-call]
        n_workers=config.dask_workers, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        yield cluster.scheduler_address


def run_pipeline(
    engine: Engine,
    project_dir: Path,
    target: str,
    *,
    actor: str,
    data_dir: Path,
    config: Any = None,
    show_progress: bool = False,
    reason: str = "by hand",
) -> RunResult:
    """One run (blocking). `config` is the GatewayConfig (its ml.pipelines, ml trust and egress apply)."""
    from gateway.ml.spec import stored_spec as _unused  # noqa: F401  (the ml package is importable)

    record = resolve(engine, target)
    spec = PipelineSpec.model_validate(record.spec)
    run_id = "prun_" + secrets.token_hex(6)
    result = RunResult(run_id, str(record.ref), "error")
    started = time.monotonic()
    pconf: PipelinesConfig = config.ml.pipelines if config is not None else PipelinesConfig()
    report: dict[str, Any] = {
        "run_id": run_id,
        "pipeline": str(record.ref),
        "model": spec.model,
        "reason": reason,
        "started_at": utcnow().isoformat(),
        "engine": spec.engine.backend,
    }
    deadline = bounded.Deadline(pconf.timeout_s)
    try:
        with _stages(show_progress) as show:

            def stage(name: str) -> None:
                deadline.left(name)  # each stage boundary: stopped once the time is up
                report["stage"] = name
                show(name)

            _run(
                engine,
                project_dir,
                spec,
                record,
                result,
                report,
                stage,
                pconf,
                config,
                actor,
                data_dir,
                deadline,
            )
    except bounded.RunTimedOut as exc:
        result.status = "timeout"
        result.error = exc.message
        log.warning("pipeline run %s of %s: %s", run_id, record.ref, exc.message)
    except (OpsgateError, ValueError) as exc:
        result.status = "error"
        result.error = exc.message if isinstance(exc, OpsgateError) else str(exc)
    except Exception as exc:  # scikit-learn, pandas, Dask: the run failed; say how, register nothing
        log.exception("pipeline run %s of %s failed", run_id, record.ref)
        result.status = "error"
        result.error = f"{type(exc).__name__}: {exc}"
    report["status"] = result.status
    report["error"] = result.error
    report["failed_gates"] = result.failed_gates
    report["candidate"] = result.candidate
    report["duration_s"] = round(time.monotonic() - started, 3)
    result.report = report
    result.report_paths = write_reports(report, data_dir / "pipelines" / run_id)
    _store(engine, spec.model, result, report)
    return result


def _run(
    engine: Engine,
    project_dir: Path,
    spec: PipelineSpec,
    record: VersionRecord,
    result: RunResult,
    report: dict[str, Any],
    stage: Progress,
    pconf: PipelinesConfig,
    config: Any,
    actor: str,
    data_dir: Path,
    deadline: bounded.Deadline,
) -> None:
    stage("load")
    loaded = data.load(spec, project_dir, engine=engine, databases=pconf.databases, data_dir=data_dir)
    report["data"] = {"source": loaded.source, "hash": loaded.data_hash, "rows": len(loaded.frame)}
    stage("clean")
    cleaned = data.clean(spec, loaded)
    report["cleaning"] = cleaned.report
    stage("split")
    parts = train.split(spec, cleaned.x, cleaned.y, cleaned.order)
    report["split"] = parts.description
    classes = sorted(set(parts.y_train.tolist()), key=str) if spec.task == "classification" else []
    positive = train.positive_class(spec, classes) if classes else None
    stage("train")
    egress = _egress(config)
    # training runs in a child process, killed at the deadline (bounded.py)
    if spec.engine.backend == "dask":
        with dask_cluster(pconf, egress) as address:
            trained = bounded.call_within(
                deadline, "train", train.fit, spec, parts, positive, classes, dask=address
            )
    else:
        trained = bounded.call_within(deadline, "train", train.fit, spec, parts, positive, classes)
    report["training"] = {
        "estimator": spec.estimator.name,
        "best_params": trained.best_params,
        "cv_score": trained.cv_score,
        "candidates_tried": trained.candidates,
        "train_rows": len(parts.x_train),
        "test_rows": len(parts.x_test),
    }
    stage("validate")
    metrics = train.measure(spec, trained.model, parts.x_test, parts.y_test, positive)
    production = _production_metrics(engine, project_dir, spec, parts, positive, config, data_dir)
    report["metrics"] = {"candidate": metrics, "production": production}
    gates, failed = judge(spec, metrics, production)
    fairness = _fairness(spec, trained.model, parts)
    if fairness is not None:
        report["fairness"] = fairness
        if spec.validation.fairness:
            ok = not fairness["breached"]
            broken = [
                f"{a}: {', '.join(r['breaches'])}" for a, r in fairness["attributes"].items() if r["breaches"]
            ]
            gates.append(
                {"gate": "fairness bounds of produces.fairness", "passed": ok, "detail": "; ".join(broken)}
            )
            if not ok:
                failed.append("fairness: " + "; ".join(broken))
    report["gates"] = gates
    result.failed_gates = failed
    if failed:
        result.status = "failed"
        stage("register")
        stage("report")
        return
    stage("register")
    lineage = {
        "pipeline": str(record.ref),
        "pipeline_commit": record.git_commit,
        "data_hash": loaded.data_hash,
        "metrics": metrics,
        "run_id": result.run_id,
    }
    candidate = register_candidate(
        engine, spec, record, trained.model, parts, lineage, actor=actor, data_dir=data_dir, config=config
    )
    result.candidate = str(candidate.ref)
    report["lineage"] = lineage
    result.status = "passed"
    stage("report")


def _egress(config: Any) -> Any:
    if config is None:
        return None
    from gateway.egress import Egress

    return Egress(config.egress)


def judge(
    spec: PipelineSpec, metrics: dict[str, float | None], production: dict[str, Any] | None
) -> tuple[list[dict[str, Any]], list[str]]:
    gates: list[dict[str, Any]] = []
    failed: list[str] = []
    for g in spec.validation.gates:
        value = metrics.get(g.metric)
        higher = catalog.METRICS[g.metric][2]
        checks: list[tuple[str, bool | None]] = []
        if g.min is not None:
            checks.append((f"{g.metric} >= {g.min}", None if value is None else value >= g.min))
        if g.max is not None:
            checks.append((f"{g.metric} <= {g.max}", None if value is None else value <= g.max))
        if g.max_drop_vs_production is not None:
            base = (production or {}).get("metrics", {}).get(g.metric) if production else None
            label = f"{g.metric} not worse than production by more than {g.max_drop_vs_production}"
            if production is None or base is None:
                gates.append({"gate": label, "passed": True, "skipped": "no production version to compare"})
            else:
                ok = value is not None and (
                    value >= base - g.max_drop_vs_production
                    if higher
                    else value <= base + g.max_drop_vs_production
                )
                checks.append((f"{label} (production {base:.4f})", ok))
        for label, ok in checks:
            passed = bool(ok)
            detail = f"candidate {value:.4f}" if value is not None else "not measurable on the test rows"
            gates.append({"gate": label, "passed": passed, "detail": detail})
            if not passed:
                failed.append(f"{label}: {detail}")
    return gates, failed


def _fairness(spec: PipelineSpec, model: Any, parts: train.Split) -> dict[str, Any] | None:
    fair = spec.produces.fairness
    if fair is None:
        return None
    from gateway.ml.fairness import fairness_report

    cols = [str(c) for c in getattr(model, "feature_names_in_", train.features(spec))]
    predictions = [p.item() if hasattr(p, "item") else p for p in model.predict(parts.x_test[cols])]
    rows = parts.x_test.astype(object).where(parts.x_test.notna(), None).to_dict("records")
    report: dict[str, Any] = fairness_report(rows, predictions, parts.y_test.tolist(), fair)
    return report


def _production_metrics(
    engine: Engine,
    project_dir: Path,
    spec: PipelineSpec,
    parts: train.Split,
    positive: Any,
    config: Any,
    data_dir: Path,
) -> dict[str, Any] | None:
    """The production version of the model, measured on the same test rows (None if there is none)."""
    store = VersionStore(engine)
    version = store.aliases("model", spec.model).get(("model", spec.model), {}).get("production")
    if version is None:
        return None
    record = store.get("model", spec.model, version)
    assert record is not None
    from gateway.ml.artifacts import ArtifactStore, load_model, verified_files
    from gateway.ml.model import ServedModel
    from gateway.ml.spec import stored_spec
    from gateway.ml.trust import LoadGrant, TrustList
    from gateway.registry.blobs import blob_root
    from gateway.registry.rules import protected_aliases_in_force

    try:
        mspec = stored_spec(record.spec, str(record.ref))
        grant = None
        if config is not None:
            protected = protected_aliases_in_force(engine, config.governance.protected_aliases)
            grant = LoadGrant(TrustList.from_config(config.ml), True, protected)
        ref = str(record.ref)
        store_ = ArtifactStore(blob_root(data_dir))
        files = verified_files(mspec, record.content_hash, ref, record.source_path, project_dir, store_)
        estimator, unsafe = load_model(mspec, files[mspec.model.file], ref, grant)
        served = ServedModel.build(
            ref, record.name, record.version, record.content_hash, mspec, estimator, files, unsafe=unsafe
        )
        missing = [c for c in served.order if c not in parts.x_test.columns]
        if missing:
            return {
                "ref": str(record.ref),
                "error": f"its inputs {missing} are not in the data",
                "metrics": {},
            }
        x = parts.x_test[list(served.order)]
        return {
            "ref": str(record.ref),
            "metrics": train.measure(spec, served.estimator, x, parts.y_test, positive),
        }
    except (OpsgateError, ValueError) as exc:
        message = exc.message if isinstance(exc, OpsgateError) else str(exc)
        return {"ref": str(record.ref), "error": message, "metrics": {}}


def register_candidate(
    engine: Engine,
    spec: PipelineSpec,
    record: VersionRecord,
    model: Any,
    parts: train.Split,
    lineage: dict[str, Any],
    *,
    actor: str,
    data_dir: Path,
    config: Any = None,
) -> VersionRecord:
    """Write the model through gateway.ml.register into a scratch folder, then register that content as
    a version of the model (files into the model store; no alias moves)."""
    from gateway.ml.register import MODELS_DIR, register
    from gateway.registry.blobs import BlobStore, blob_root
    from gateway.registry.files import load_artifact_from
    from gateway.registry.store import SourceInfo
    from gateway.registry.sync import register_artifact
    from gateway.registry.tree import WorkingTree

    produces = spec.produces
    schema = {k: v.model_dump(exclude_defaults=True) for k, v in produces.inputs.items()}
    extra: dict[str, Any] = {
        "data_quality": produces.data_quality.model_dump(exclude_defaults=True),
        "drift": produces.drift.model_dump(exclude_defaults=True),
        "accuracy": produces.accuracy.model_dump(exclude_defaults=True),
        "explain": produces.explain.model_dump(exclude_defaults=True),
    }
    if produces.fairness is not None:
        extra["fairness"] = produces.fairness.model_dump(exclude_defaults=True)
    if produces.owner:
        extra["owner"] = produces.owner
    short = lineage["data_hash"].removeprefix("sha256:")[:16]
    extra["tags"] = [*produces.tags, f"pipeline:{record.name}@{record.version}", f"data:sha256:{short}"]
    output = produces.output.model_dump(exclude_defaults=True)
    if spec.task == "classification":
        output["labels"] = [c.item() if hasattr(c, "item") else c for c in model.classes_]
    figures = ", ".join(f"{k} {v:.4f}" for k, v in lineage["metrics"].items() if v is not None)
    description = (
        f"{produces.description + ' ' if produces.description else ''}Trained by {lineage['pipeline']}"
        f" (run {lineage['run_id']}) on data {lineage['data_hash']}; test {figures}."
    )
    reference = None
    if produces.reference == "train":
        reference = parts.x_train.assign(**{spec.target: parts.y_train})
    with tempfile.TemporaryDirectory(prefix="opsgate-pipeline-") as scratch:
        register(
            model,
            spec.model,
            schema,
            reference,
            project_dir=scratch,
            target=spec.target if reference is not None else None,
            description=description,
            output=output,
            **extra,
        )
        art = load_artifact_from(WorkingTree(Path(scratch)), "model", f"{MODELS_DIR}/{spec.model}.yaml")
        _check_loads(art, config)
        source = SourceInfo(
            path=f"{MODELS_DIR}/{spec.model}.yaml",
            commit=record.git_commit,
            author=actor,
            message=f"candidate from {lineage['pipeline']} run {lineage['run_id']}",
            # whoever wrote the pipeline version wrote the recipe of this model: four-eyes counts them
            authors=tuple(record.authors) or ((record.git_author,) if record.git_author else ()),
        )
        created, _ = register_artifact(engine, art, source, actor=actor, blobs=BlobStore(blob_root(data_dir)))
    return created


def _check_loads(art: Any, config: Any) -> None:
    """A candidate the gateway could not load is refused before it is registered (e.g. tree models need
    the operator to trust skops' tree type)."""
    import skops.io as sio

    from gateway.ml.trust import TrustList

    blob = art.referenced[art.spec.model.file]
    untrusted = [str(t) for t in sio.get_untrusted_types(data=blob)]
    trust = TrustList.from_config(config.ml) if config is not None else None
    refused = [t for t in untrusted if trust is None or t not in trust.types]
    if refused and not (trust is not None and trust.trusts(art.name, blob)):
        raise ConfigError(
            f"the trained model holds types outside skops' safe set ({', '.join(refused)}), so the gateway"
            " would refuse to load it; an operator may list them in ml.trusted_types (config/gateway.yaml)."
            " Nothing was registered"
        )


def _store(engine: Engine, model: str, result: RunResult, report: dict[str, Any]) -> None:
    from gateway.ml.tables import MLReport

    version = int(result.candidate.split("@", 1)[1].split("#", 1)[0]) if result.candidate else 0
    with Session(engine) as session:
        session.add(
            MLReport(
                ts=utcnow(),
                name=model,
                version=version,
                kind=RUN_KIND,
                breached=result.status != "passed",
                result=orjson.loads(orjson.dumps(report, option=orjson.OPT_SERIALIZE_NUMPY, default=str)),
            )
        )
        session.commit()


def write_reports(report: dict[str, Any], folder: Path) -> list[str]:
    """report.json (everything) and report.html (candidate vs production, gates, cleaning counts)."""
    from gateway.evaluation.reports import _e, comparison_svg

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_bytes(
        orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY, default=str)
    )
    metrics = report.get("metrics", {})
    cand = metrics.get("candidate", {}) or {}
    prod = (metrics.get("production") or {}).get("metrics", {}) or {}
    rows = [(name, cand.get(name), prod.get(name)) for name in cand]
    gates = "".join(
        f"<tr><td>{_e(g['gate'])}</td><td>{'pass' if g['passed'] else 'FAIL'}</td>"
        f"<td>{_e(g.get('detail') or g.get('skipped') or '')}</td></tr>"
        for g in report.get("gates", [])
    )
    cleaning = report.get("cleaning", {})
    rules = "".join(
        f"<tr><td>{_e(rule)}</td><td>{c['dropped']}</td><td>{c['fixed']}</td></tr>"
        for rule, c in cleaning.get("rules", {}).items()
    )
    production = (metrics.get("production") or {}).get("ref", "none")
    html = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>opsgate pipeline {_e(report['pipeline'])}</title></head><body>"
        f"<h1>{_e(report['pipeline'])}: {_e(report.get('status', ''))}</h1>"
        f"<p>run {_e(report['run_id'])} ({_e(report.get('reason', ''))}); candidate {_e(report.get('candidate') or 'none')};"
        f" production {_e(production)}; data {_e(report.get('data', {}).get('hash', ''))}</p>"
        f"<p>{_e(report.get('split', ''))}</p>"
        f"{'<p><b>error:</b> ' + _e(report['error']) + '</p>' if report.get('error') else ''}"
        "<h2>Candidate (blue) vs production (grey) on the test rows</h2>"
        f"{comparison_svg(rows) if rows else '<p>no metrics</p>'}"
        f"<h2>Gates</h2><table border='1'><tr><th>gate</th><th>result</th><th>detail</th></tr>{gates}</table>"
        f"<h2>Cleaning</h2><p>{cleaning.get('rows_in', '-')} rows in, {cleaning.get('rows_out', '-')} out</p>"
        f"<table border='1'><tr><th>rule</th><th>rows dropped</th><th>cells fixed</th></tr>{rules}</table>"
        "</body></html>"
    )
    (folder / "report.html").write_text(html, encoding="utf-8")
    return [str(folder / "report.json"), str(folder / "report.html")]
