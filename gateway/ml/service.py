"""Classic models on the gateway's road: resolve model@v -> data-quality checks -> predict -> log -> monitor.

HTTP-free (gateway/api/ml.py is the thin layer). The request path reads no database: versions come from
the catalog's snapshot, loaded models from an in-memory cache keyed by (name, version, hash) and filled
off the request path whenever a protected alias points at a version (or, once, by the first request for
another version the caller may reach). What loads is decided in gateway/ml/trust.py: a file that can run
code loads only with the operator's trust and while a protected alias points at its version.
Prediction payloads go to the ML writer's queue, and only for requests that are answered; the request
itself to the shared request log.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from gateway.db.generation import utcnow
from gateway.db.outage import Outage, database_unavailable
from gateway.errors import InvalidFields, ModelNotFound, NotFound, OpsgateError, PermissionDenied
from gateway.flow.access import VersionAccess
from gateway.flow.call import Call
from gateway.flow.shadow import Pin, ShadowOrder, ShadowRunner
from gateway.ml.artifacts import ArtifactStore, load_model, verified_files
from gateway.ml.batching import MicroBatcher
from gateway.ml.config import MLConfig
from gateway.ml.errors import (
    DataQualityError,
    ExplanationFailed,
    ModelNotApproved,
    ModelUnavailable,
    Violation,
)
from gateway.ml.explain import Explainer, warm_up
from gateway.ml.explain import warmed as explain_warmed
from gateway.ml.model import Outputs, ServedModel
from gateway.ml.monitor import Monitor
from gateway.ml.schema import split
from gateway.ml.spec import ModelSpec, stored_spec
from gateway.ml.tables import MLFeedback, MLPrediction, MLQualityEvent
from gateway.ml.trust import LoadGrant, TrustList, approved
from gateway.ml.writer import Batch, MLWriter
from gateway.monitoring.alerts import Alerts
from gateway.monitoring.metrics import Metrics
from gateway.registry.blobs import blob_root
from gateway.registry.refs import parse_ref
from gateway.registry.store import VersionRecord
from gateway.snapshot import Catalog, Snapshot

if TYPE_CHECKING:
    from gateway.ml.pipelines.schedule import PipelineScheduler

log = logging.getLogger("opsgate.ml")
Key = tuple[str, int, str]
RETRY_FAILED_LOAD_S = 5.0
RECENT_REQUESTS = 100_000
LOOKUP_CHUNK = 900  # ids per query: under every database's bound-parameter limit
PREDICTION_ID = re.compile(r"^[A-Za-z0-9_.-]{1,48}:[0-9]{1,9}$")  # <request id>:<row>


def load_served(
    record: VersionRecord,
    spec: ModelSpec,
    project_dir: Path,
    store: ArtifactStore,
    *,
    grant: LoadGrant | None = None,
    warm: bool = False,
) -> ServedModel:
    """Verify the version's bytes (store first, then the project), load the model as `grant` allows
    (None: safe files only). Blocking. `warm`: also compile the explanation code once per process."""
    files = verified_files(spec, record.content_hash, record.ref, record.source_path, project_dir, store)
    estimator, unsafe = load_model(spec, files[spec.model.file], record.ref, grant)
    served = ServedModel.build(
        record.ref, record.name, record.version, record.content_hash, spec, estimator, files, unsafe=unsafe
    )
    if warm:
        warm_up(served)
    return served


class Prediction:
    """What one predict call produced (the API layer shapes it for its protocol)."""

    __slots__ = ("explanations", "ids", "outputs", "served", "violations")

    def __init__(
        self, served: ServedModel, outputs: Outputs, ids: list[str], violations: list[Violation]
    ) -> None:
        self.served = served
        self.outputs = outputs
        self.ids = ids
        self.violations = violations
        self.explanations: list[dict[str, Any]] | None = None


class MLService:
    def __init__(
        self,
        *,
        engine: Engine,
        catalog: Catalog,
        metrics: Metrics,
        alerts: Alerts,
        config: MLConfig,
        project_dir: Path,
        data_dir: Path,
        policy: Any = None,
        access: VersionAccess | None = None,
        finish: Callable[[Call, int, OpsgateError | None], None] | None = None,
        shadow_in_flight: int = 8,
    ) -> None:
        self.policy = policy  # gateway.policy.pipeline.Pipeline: the same checks as chat requests
        # Gateway.finish: writes a shadow scoring's log row (live calls are finished by the API layer)
        self.finish = finish
        self.shadows = ShadowRunner(self._shadow_predict, max_in_flight=shadow_in_flight)
        self.engine = engine
        self.catalog = catalog
        self.metrics = metrics
        self.alerts = alerts
        self.config = config
        self.project_dir = project_dir
        # the request flow's version rule (gateway/flow/access.py): approved = a protected alias points at it
        self.access = access or VersionAccess(catalog, frozenset({"staging", "production"}))
        self.trust = TrustList.from_config(config)
        self.store = ArtifactStore(blob_root(data_dir))
        self.writer = MLWriter(
            engine,
            queue_size=config.queue_size,
            batch_size=config.batch_size,
            flush_interval_s=config.flush_interval_s,
            spool_dir=data_dir / "spool" / "ml-log",
        )
        self.monitor = Monitor(
            engine,
            project_dir,
            commands=config.retrain_commands,
            timeout_s=config.retrain_timeout_s,
            data_dir=data_dir,
            config_loader=lambda: _gateway_config(project_dir),
        )
        self._specs: dict[Key, ModelSpec] = {}
        self._served: dict[Key, ServedModel] = {}
        self._explainers: dict[Key, Explainer] = {}
        self._batchers: dict[Key, MicroBatcher] = {}
        self._loading: dict[Key, asyncio.Task[ServedModel]] = {}
        self._failed: dict[Key, tuple[float, OpsgateError]] = {}
        self._recent: OrderedDict[str, tuple[str, int]] = OrderedDict()  # request id -> (name, version)
        self._monitor_task: asyncio.Task[None] | None = None
        self._monitor_outage = Outage("ML monitoring: database", log)  # one line per change of state
        self.scheduler = self._scheduler()
        # Preloads started before the first request: /readyz waits for them, so a replica takes no traffic
        # while its models (and skops, ~10 s to import on a cold machine) are still loading. None once warm.
        self._warming: set[asyncio.Task[ServedModel]] | None = set()
        catalog.listeners.append(self._on_snapshot)

    @classmethod
    def create(cls, parts: Any) -> MLService:
        """From the app's Parts (gateway.app): the catalog, metrics, alerts and settings it shares."""
        service = cls(
            policy=getattr(parts.gateway, "policy", None),
            engine=parts.engine,
            catalog=parts.catalog,
            metrics=parts.metrics,
            alerts=parts.alerts,
            config=parts.config.ml,
            project_dir=parts.settings.project_dir,
            data_dir=parts.settings.resolved_data_dir(),
            access=parts.gateway.access,
            finish=parts.gateway.finish,
            shadow_in_flight=parts.config.rollouts.shadow_max_in_flight,
        )
        writer = service.writer
        parts.metrics.gauge(
            "opsgate_ml_log_dropped", "ML prediction rows dropped (queue full).", lambda: writer.stats.dropped
        )
        parts.metrics.gauge(
            "opsgate_ml_log_backlog", "ML prediction rows waiting to be written.", lambda: writer.backlog
        )
        return service

    # -- life cycle ------------------------------------------------------------------------------------

    def _scheduler(self) -> PipelineScheduler | None:
        """Scheduled pipeline runs (gateway/ml/pipelines/schedule.py), started through the same runner as
        drift-triggered ones; None when `ml.pipelines.schedule_tick_s` is 0."""
        trigger = self.monitor.pipelines
        if trigger is None or self.config.pipelines.schedule_tick_s <= 0:
            return None
        from gateway.ml.pipelines.schedule import PipelineScheduler

        return PipelineScheduler(
            self.engine, trigger.start_run, tick_s=self.config.pipelines.schedule_tick_s, busy=trigger.running
        )

    def start(self) -> None:
        self.writer.start()
        if self.scheduler is not None:
            self.scheduler.start()
        if self.config.monitor_interval_s > 0:
            self._monitor_task = asyncio.create_task(self._monitor_loop(), name="opsgate-ml-monitor")

    async def stop(self) -> None:
        await self.shadows.stop()
        if self.scheduler is not None:
            await self.scheduler.stop()
        if self._monitor_task is not None:
            self._monitor_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor_task
        for task in list(self._loading.values()):
            with contextlib.suppress(Exception):
                await task
        await self.monitor.stop()
        await self.writer.stop()

    @property
    def protected_aliases(self) -> tuple[str, ...]:
        """The protected aliases of the governance rules in force (gateway/flow/access.py)."""
        return tuple(sorted(self.access.protected))

    def _on_snapshot(self, snapshot: Snapshot) -> None:
        self._evict_unapproved(snapshot)
        if not self.config.preload:
            return
        protected = self.protected_aliases
        for (kind, name), aliases in snapshot.aliases.items():
            if kind != "model":
                continue
            # only approved versions (a protected alias points at them): never `latest` or a fresh sync
            for version in {v for a, v in aliases.items() if a in protected}:
                record = snapshot.records.get((kind, name, version))
                if record is not None and self._key(record) not in self._served:
                    task = self._load_task(record, warm=self.config.warm_explanations)
                    task.add_done_callback(_log_failure)
                    if self._warming is not None:
                        self._warming.add(task)

    @property
    def warming(self) -> int:
        """Start-up preloads still running (0 for good once they have all ended, loaded or failed)."""
        if self._warming is None:
            return 0
        self._warming = {t for t in self._warming if not t.done()}
        if not self._warming:
            self._warming = None
            return 0
        return len(self._warming)

    def readiness(self) -> dict[str, int | bool]:
        return {
            "loaded": len(self._served),
            "loading": self.warming,
            "failed": len(self._failed),
            "explanations_warm": explain_warmed(),
        }

    def _evict_unapproved(self, snapshot: Snapshot) -> None:
        """A model whose loading ran code stays in memory only while a protected alias points at it (as
        after a restart, when it would not load)."""
        protected = self.protected_aliases
        for key, served in list(self._served.items()):
            aliases = snapshot.aliases.get(("model", served.name), {})
            if served.unsafe and not approved(aliases, served.version, protected):
                log.info("%s is no longer behind a protected alias: unloaded", served.ref)
                del self._served[key]
                self._explainers.pop(key, None)
                self._batchers.pop(key, None)

    # -- models --------------------------------------------------------------------------------------

    @staticmethod
    def _key(record: VersionRecord) -> Key:
        return (record.name, record.version, record.content_hash)

    def approved(self, record: VersionRecord) -> bool:
        """Whether a protected alias points at this version now."""
        return self._approved(record)

    def _approved(self, record: VersionRecord) -> bool:
        return self.access.approved(record)

    def spec(self, record: VersionRecord) -> ModelSpec:
        """The version's parsed spec (cached: versions are immutable); ModelUnavailable if unreadable."""
        key = self._key(record)
        found = self._specs.get(key)
        if found is None:
            found = self._specs[key] = stored_spec(record.spec, record.ref)
        return found

    def grant(self, record: VersionRecord) -> LoadGrant:
        """What loading this version may do now (gateway/ml/trust.py)."""
        return LoadGrant(self.trust, self._approved(record), self.protected_aliases)

    def _load_task(self, record: VersionRecord, *, warm: bool = False) -> asyncio.Task[ServedModel]:
        key = self._key(record)
        task = self._loading.get(key)
        if task is None:
            grant = self.grant(record)  # decided now, on the event loop, from this snapshot's aliases

            def load() -> ServedModel:
                spec = self.spec(record)
                return load_served(record, spec, self.project_dir, self.store, grant=grant, warm=warm)

            task = asyncio.create_task(asyncio.to_thread(load))
            self._loading[key] = task
            task.add_done_callback(functools.partial(self._loaded, key))
        return task

    def _loaded(self, key: Key, task: asyncio.Task[ServedModel]) -> None:
        self._loading.pop(key, None)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            self._served[key] = task.result()
            self._failed.pop(key, None)
        elif isinstance(exc, OpsgateError):
            self._failed[key] = (time.monotonic(), exc)

    async def served(self, record: VersionRecord) -> ServedModel:
        key = self._key(record)
        found = self._served.get(key)
        if found is not None:
            if found.unsafe and not self._approved(record):  # the alias moved on; eviction follows
                raise ModelNotApproved(
                    f"{record.ref} was loaded from a file that runs code, and no protected alias points at it"
                    " any more; promote it again to serve it",
                    param="model",
                )
            return found
        failed = self._failed.get(key)
        if failed is not None and time.monotonic() - failed[0] < RETRY_FAILED_LOAD_S:
            raise failed[1]
        try:
            return await asyncio.shield(self._load_task(record))
        except OpsgateError:
            raise
        except Exception as exc:
            raise ModelUnavailable(f"{record.ref} cannot be loaded: {type(exc).__name__}: {exc}") from exc

    def resolve(self, call: Call, target: str, *, user: str | None = None) -> VersionRecord:
        """The version a request is served: an alias under a live canary rollout serves the caller's arm
        (sticky per key principal and the body's `user`), and the log row says which (`extra.rollout`)."""
        ref = parse_ref(target, default_kind="model", param="model")
        call.model = target  # a valid reference only: the log row and metrics never carry arbitrary text
        if ref.kind != "model":
            raise ModelNotFound(
                f"{target!r} is not a model; use name, name@VERSION or name@ALIAS", param="model"
            )
        assert call.principal is not None
        caller = f"{call.principal.principal}:{user}" if user else call.principal.principal
        record, assigned = self.catalog.resolve_for("model", ref.name, ref.selector, caller)
        if assigned is not None:
            call.extra["rollout"] = tag = assigned.tag("model", record.name)
            if assigned.rollout.shadowed(call.request_id, utcnow()):
                tag["shadowed"] = True  # predict scores the rows with the candidate too, off the path
        if not call.principal.may_call("model", record.name):
            raise PermissionDenied(
                f"this key may not call model:{record.name} (its allow list does not include it)",
                param="model",
            )
        self.access.check(call.principal, record, ref.selector)
        call.artifacts.append(record.ref)
        return record

    async def served_for(self, name: str, selector: str | None) -> ServedModel:
        return await self.served(self.catalog.resolve("model", name, selector))

    def batcher(self, served: ServedModel) -> MicroBatcher:
        key = (served.name, served.version, served.content_hash)
        found = self._batchers.get(key)
        if found is None:
            found = self._batchers[key] = MicroBatcher(served)
        return found

    def explainer(self, served: ServedModel) -> Explainer:
        key = (served.name, served.version, served.content_hash)
        found = self._explainers.get(key)
        if found is None:
            found = self._explainers[key] = Explainer(served)
        return found

    # -- predict ---------------------------------------------------------------------------------------

    async def predict(
        self, call: Call, record: VersionRecord, rows: list[Any], *, explain: bool = False
    ) -> Prediction:
        """Check, score, explain; only then log the predictions (the caller gets their ids only now)."""
        if self.policy is not None:  # the policy pipeline, as for chat: access, limits, PII in string fields
            from gateway.policy.payloads import records_payload

            await self.policy.pre_call(call, records_payload([r for r in rows if isinstance(r, dict)]))
        served = await self.served(record)
        if explain:
            _check_explainable(served, len(rows))
        violations = self._check_rows(call, served, rows)
        outputs = await self._score(served, rows)
        result = Prediction(served, outputs, [f"{call.request_id}:{i}" for i in range(len(rows))], violations)
        if explain:
            result.explanations = await self._explain(served, rows)
        self._record_answer(call, result, rows)
        order = self._shadow_order(call, rows)
        if order is not None:
            self.shadows.submit(call, order)
        return result

    # -- shadow scoring --------------------------------------------------------------------------------

    def _shadow_order(self, call: Call, rows: list[Any]) -> ShadowOrder | None:
        """For a request a shadow rollout sampled: its rows, for the candidate to score after the answer."""
        tag = call.extra.get("rollout")
        if not isinstance(tag, dict) or not tag.get("shadowed"):
            return None
        for live in self.catalog.snapshot.rollouts.values():
            if live.id == tag["id"]:
                return ShadowOrder(Pin("model", live.name, live.candidate, live.id), {"records": rows})
        return None

    async def _shadow_predict(self, live: Call, order: ShadowOrder, request_id: str) -> int:
        """The candidate scores a live request's rows (gateway/flow/shadow.py): no policy checks or limits,
        no metrics; its predictions are logged under its own request id (`extra.shadow_of` names the live
        one, whose feedback judges them), its answer dropped."""
        pin = order.pin
        call = Call(request_id=request_id, route=live.route, principal=live.principal, model=live.model)
        call.pin = pin
        call.extra["rollout"] = {"id": pin.rollout_id, "arm": "shadow", "target": f"model:{pin.name}"}
        call.extra["shadow_of"] = live.request_id
        rows: list[Any] = order.body["records"]
        status, error = 200, None
        try:
            record = self.catalog.resolve("model", pin.name, str(pin.version))
            call.artifacts.append(record.ref)
            served = await self.served(record)
            assert served.validator is not None
            violations = served.validator.validate(rows)
            if split(violations)[0]:  # rows the candidate's schema refuses: it cannot answer them
                raise DataQualityError(violations)
            outputs = await self._score(served, rows)
            ids = [f"{request_id}:{i}" for i in range(len(rows))]
            self._log_predictions(call, served, rows, outputs, ids, [])
            call.extra["ml"] = {"rows": len(rows), "flagged": 0}
        except OpsgateError as exc:
            status, error = exc.status, exc
        except asyncio.CancelledError:
            self._finish(
                call, 499, OpsgateError("the gateway stopped during the shadow scoring", code="shadow_cut")
            )
            raise
        except Exception as exc:  # noqa: BLE001 - a bug: the row says so, as for live calls
            status, error = 500, OpsgateError(f"internal error ({type(exc).__name__}) in a shadow scoring")
        self._finish(call, status, error)
        return status

    def _finish(self, call: Call, status: int, error: OpsgateError | None) -> None:
        if self.finish is not None:
            self.finish(call, status, error)

    def _check_rows(self, call: Call, served: ServedModel, rows: list[Any]) -> list[Violation]:
        """The data-quality checks: raises DataQualityError (and logs the rejection) when rows are refused."""
        assert served.validator is not None
        violations = served.validator.validate(rows)
        if not violations:
            return violations
        self.metrics.observe_ml_violations(_artifact(served), [(v.field, v.rule) for v in violations])
        hard, _soft = split(violations)
        reject = bool(hard) or served.spec.data_quality.on_violation == "reject"
        action = "reject" if reject else "flag"
        call.decisions.append({"check": "data_quality", "action": action, "violations": len(violations)})
        if reject:
            self._quality_event(call, served, "reject", len(rows), violations)
            raise DataQualityError(violations)
        return violations

    async def _score(self, served: ServedModel, rows: list[Any]) -> Outputs:
        try:
            if len(rows) > self.config.inline_rows:
                return await asyncio.to_thread(served.predict, rows)
            # small requests: on the loop, stacked with whatever else arrived in the same turn
            return await self.batcher(served).predict(rows)
        except (ValueError, TypeError) as exc:
            raise InvalidFields(
                f"the model could not score these rows: {str(exc)[:500]}", code="model_input_error"
            ) from exc

    async def _explain(self, served: ServedModel, rows: list[Any]) -> list[dict[str, Any]]:
        try:
            return await asyncio.to_thread(self.explainer(served).explain_rows, rows)
        except OpsgateError:
            raise
        except Exception as exc:
            log.warning("explaining %s failed: %s: %s", served.ref, type(exc).__name__, exc)
            raise ExplanationFailed(
                f"{served.ref} scored the rows but could not explain them ({type(exc).__name__}:"
                f" {str(exc)[:300]}); nothing was recorded. Retry without explain, or check the model's"
                " reference data (explanations score its rows mixed with yours)."
            ) from exc

    def _record_answer(self, call: Call, result: Prediction, rows: list[Any]) -> None:
        """Everything that counts toward monitoring (drift, fairness, accuracy) is written for answered
        requests only: their ids are what feedback refers to."""
        served, violations = result.served, result.violations
        if violations:  # flagged rows were scored: their event belongs to the answer
            self._quality_event(call, served, "flag", len(rows), violations)
        self._log_predictions(call, served, rows, result.outputs, result.ids, violations)
        self.metrics.observe_ml_rows(_artifact(served), len(rows))
        call.extra["ml"] = {"rows": len(rows), "flagged": len({v.row for v in violations})}

    def _log_predictions(
        self,
        call: Call,
        served: ServedModel,
        rows: list[Any],
        outputs: Outputs,
        ids: list[str],
        violations: list[Violation],
    ) -> None:
        flags: dict[int, list[dict[str, Any]]] = {}
        for v in violations:
            flags.setdefault(v.row, []).append({"field": v.field, "rule": v.rule})
        labels, scores, values = outputs.labels, outputs.scores, outputs.values
        ts = call.ts
        batch = [
            {
                "id": ids[i],
                "request_id": call.request_id,
                "ts": ts,
                "name": served.name,
                "version": served.version,
                "content_hash": served.content_hash,
                "inputs": row,
                "label": labels[i] if labels is not None else None,
                "score": scores[i] if scores is not None else None,
                "value": values[i] if values is not None else None,
                "flags": flags.get(i),
            }
            for i, row in enumerate(rows)
        ]
        self.writer.submit(Batch(MLPrediction, batch))
        self._recent[call.request_id] = (served.name, served.version)
        if len(self._recent) > RECENT_REQUESTS:
            self._recent.popitem(last=False)

    def _quality_event(
        self, call: Call, served: ServedModel, action: str, rows: int, violations: list[Violation]
    ) -> None:
        row = {
            "request_id": call.request_id,
            "ts": call.ts,
            "name": served.name,
            "version": served.version,
            "action": action,
            "rows": rows,
            "violations": [v.as_dict() for v in violations[:1000]],
        }
        self.writer.submit(Batch(MLQualityEvent, [row]))

    # -- feedback --------------------------------------------------------------------------------------

    async def feedback(self, call: Call, name: str, items: list[dict[str, Any]]) -> int:
        if not self.catalog.has("model", name):
            raise ModelNotFound(f"model:{name!r} does not exist in the registry", param="model")
        call.model = name
        assert call.principal is not None
        if not call.principal.may_call("model", name):
            raise PermissionDenied(f"this key may not call model:{name}", param="model")
        versions = await self._prediction_versions(name, [str(i["prediction_id"]) for i in items])
        rows = []
        for i, item in enumerate(items):
            pid = str(item["prediction_id"])
            version = versions.get(pid)
            if version is None:
                raise NotFound(
                    f"feedback[{i}].prediction_id: {pid!r} is not a prediction of model:{name} (ids are"
                    " '<x-opsgate-request-id>:<row>')",
                    code="prediction_not_found",
                )
            self._check_label(name, version, item["label"], i)
            rows.append(
                {
                    "prediction_id": pid,
                    "name": name,
                    "ts": utcnow(),
                    "label": item["label"],
                    "key_id": call.principal.key_id,
                }
            )
        self.writer.submit(Batch(MLFeedback, rows))
        return len(rows)

    async def _prediction_versions(self, name: str, ids: list[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        unknown: list[str] = []
        for pid in ids:
            request_id, _, row = pid.rpartition(":")
            recent = self._recent.get(request_id)
            if recent is not None and recent[0] == name and row.isdigit():
                found[pid] = recent[1]
            else:
                unknown.append(pid)
        if unknown:
            found.update(await asyncio.to_thread(self._lookup, name, unknown))
        return found

    def _lookup(self, name: str, ids: list[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        # ids of another shape cannot exist; leaving them out also keeps NUL and the like away from SQL
        wellformed = [pid for pid in ids if PREDICTION_ID.match(pid)]
        with Session(self.engine) as s:
            for start in range(0, len(wellformed), LOOKUP_CHUNK):
                q = select(MLPrediction.id, MLPrediction.version).where(
                    MLPrediction.name == name, MLPrediction.id.in_(wellformed[start : start + LOOKUP_CHUNK])
                )
                found.update({pid: version for pid, version in s.execute(q)})
        return found

    def _check_label(self, name: str, version: int, label: Any, i: int) -> None:
        served = next((m for k, m in self._served.items() if k[0] == name and k[1] == version), None)
        if isinstance(label, dict | list) or label is None:
            raise InvalidFields(
                f"feedback[{i}].label: must be a single value (the true label)", param=f"feedback[{i}].label"
            )
        if served is None:
            return
        if served.classes is None:
            if isinstance(label, bool) or not isinstance(label, int | float):
                raise InvalidFields(
                    f"feedback[{i}].label: must be a number (regression)", param=f"feedback[{i}].label"
                )
        elif str(label) not in {str(c) for c in served.classes}:
            raise InvalidFields(
                f"feedback[{i}].label: {label!r} is not one of the model's classes {served.classes}",
                param=f"feedback[{i}].label",
            )

    # -- monitoring ------------------------------------------------------------------------------------

    async def _deliver(self, kind: str, payload: dict[str, Any]) -> None:
        self.alerts.emit(kind, payload)

    async def check(self, served: ServedModel) -> dict[str, Any]:
        await self.writer.flush()
        found = await self.monitor.check(served, self._deliver)
        self.metrics.observe_ml_figures(served.ref.split("#", 1)[0], found)
        return found

    async def _monitor_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.monitor_interval_s)
            for served in list(self._served.values()):
                try:
                    await self.check(served)
                except Exception as exc:
                    if database_unavailable(exc) is None:
                        log.exception("monitoring %s failed; will retry", served.ref)
                    else:
                        self._monitor_outage.failed(exc, "drift, accuracy and fairness wait until it answers")
                        break
                else:
                    self._monitor_outage.recovered()


def _artifact(served: ServedModel) -> str:
    return served.ref.split("#", 1)[0]


def _check_explainable(served: ServedModel, rows: int) -> None:
    spec = served.spec
    if spec.reference is None:
        raise InvalidFields(
            f"explain: {_artifact(served)} has no reference dataset, and explanations need one as their"
            " background (add `reference:` to the spec); send explain: false",
            param="explain",
        )
    if rows > spec.explain.max_rows:
        raise InvalidFields(
            f"explain: at most {spec.explain.max_rows} rows per request can be explained (this one has"
            f" {rows}); split the request, or send explain: false (the spec's explain.max_rows sets it)",
            param="explain",
        )


def _log_failure(task: asyncio.Task[ServedModel]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("model preload failed: %s", task.exception())


def _gateway_config(project_dir: Path) -> Any:
    """The operator's config/gateway.yaml as it is now (a triggered pipeline reads its ml.pipelines, trust
    and egress rules when it starts)."""
    from gateway.settings import Settings

    return Settings(project_dir=project_dir).load_gateway_config()
