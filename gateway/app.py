"""The FastAPI app factory: builds every part from settings and passes them in (no module globals)."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute, APIRouter
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match, Route

from gateway import __version__
from gateway.api import (
    admin,
    anthropic,
    completions,
    conversations,
    health,
    metrics_api,
    openai,
    openapi_spec,
    responses,
    stored,
)
from gateway.api import alerts as alerts_api
from gateway.api import ml as ml_api
from gateway.api import rollouts as rollouts_api
from gateway.api.middleware import GatewayMiddleware, error_body
from gateway.db.engine import ensure_private_dir, make_engine, migrate
from gateway.db.locks import bootstrap_lock
from gateway.db.outage import Outage, database_unavailable, describe
from gateway.egress import Egress
from gateway.errors import InvalidFields, NotFound, OpsgateError
from gateway.evaluation import online as online_eval
from gateway.flow.gateway import Gateway
from gateway.flow.traffic import TrafficRecorder
from gateway.keys import KeyService, Principal
from gateway.ml.service import MLService
from gateway.monitoring import tracing
from gateway.monitoring.alerting import AlertEngine, load_file_rules
from gateway.monitoring.alertrules import ALERTS_FILE
from gateway.monitoring.alerts import Alerts
from gateway.monitoring.metrics import Metrics
from gateway.monitoring.requestlog import RequestLogWriter
from gateway.offline import apply_offline_env
from gateway.policy.pipeline import Pipeline
from gateway.policy.setup import build_pipeline, validate_policy_file
from gateway.providers import Adapters
from gateway.providers.base import AdapterServices
from gateway.providers.minilm import MiniLMEmbedder
from gateway.registry import audit
from gateway.registry.blobs import BlobStore, blob_root
from gateway.registry.promotion import PromotionService
from gateway.registry.refs import parse_ref
from gateway.registry.rules import bootstrap_rules
from gateway.registry.sync import bootstrap, dangling_alerts_in_project, dangling_in_project, drifted
from gateway.retrieval.build import bootstrap_indexes
from gateway.retrieval.retriever import IndexLibrary, IndexRetriever
from gateway.retrieval.store import make_store
from gateway.rollouts.evaluator import RolloutEvaluator
from gateway.rollouts.service import RolloutService
from gateway.settings import GatewayConfig, Settings
from gateway.snapshot import Catalog
from gateway.traffic.store import TrafficStore
from gateway.ui import routes as ui

log = logging.getLogger("opsgate")
# Who the gateway's own calls run as (judge calls of online evaluation): no key, logged under this name.
ONLINE_EVAL_PRINCIPAL = Principal("system", "online-eval", "system:online-eval", frozenset({"app"}), ("*",))


@dataclass
class Parts:
    settings: Settings
    config: GatewayConfig
    engine: Engine
    adapters: Adapters
    catalog: Catalog
    writer: RequestLogWriter
    metrics: Metrics
    gateway: Gateway
    alerts: Alerts
    retrieval: IndexRetriever
    policy: Pipeline
    traffic: TrafficStore


def prepare_database(settings: Settings) -> Engine:
    """Engine + migrations + router bootstrap + first admin key. Blocking; also used by the CLI."""
    ensure_private_dir(settings.resolved_data_dir())
    engine = make_engine(settings.resolved_database_url())
    migrate(engine)
    audit.setup(engine, settings.resolved_data_dir())  # keyed and anchored outside the database
    # replicas starting together on one PostgreSQL database: one bootstraps, the others then find it done
    with bootstrap_lock(engine):
        _bootstrap_registry(settings, engine)
    return engine


def _bootstrap_registry(settings: Settings, engine: Engine) -> None:
    blobs = BlobStore(blob_root(settings.resolved_data_dir()))
    report = bootstrap(
        engine,
        settings.project_dir,
        actor="system:bootstrap",
        blobs=blobs,
        working_tree=settings.bootstrap_working_tree,
    )
    for record in report.registered:
        log.info("bootstrap: registered %s from %s as production", record.ref, record.source_path)
    for warning in [*report.skipped, *(e.message for e in report.errors)]:
        log.warning("bootstrap: %s", warning)
    for warning in dangling_in_project(engine, settings.project_dir):
        log.warning("%s (requests to this prompt will fail; `opsgate sync` refuses it)", warning)
    for warning in dangling_alerts_in_project(engine, settings.project_dir):
        log.warning("%s (`opsgate sync` refuses it)", warning)
    for note in drifted(engine, settings.project_dir):
        log.warning("%s: serving the registered version; run `opsgate sync` and promote to change it", note)
    rules = bootstrap_rules(engine, settings.project_dir, actor="system:bootstrap")
    for record in rules or []:
        log.info("bootstrap: %s from %s is in force (production)", record.ref, record.source_path)
    key_file = KeyService(engine).ensure_bootstrap_admin(settings.resolved_data_dir())
    if key_file is not None:
        print(f"opsgate: no API keys existed; created an admin key in {key_file} (readable only by you)")


def build_parts(settings: Settings, config: GatewayConfig, engine: Engine) -> Parts:
    minilm = MiniLMEmbedder()  # the one MiniLM of the process: local embeddings and index queries
    egress = Egress(config.egress)  # the operator's allow-lists: provider hosts, key variables, webhooks
    adapters = Adapters(AdapterServices(minilm, egress, limits=config.limits.local))
    catalog = Catalog(engine, adapters, refresh_interval_s=config.cache.refresh_interval_s)
    metrics = Metrics(known_name=functools.partial(registered_name, catalog))
    data_dir = settings.resolved_data_dir()
    writer = _request_log_writer(config, engine, data_dir, metrics)
    library = IndexLibrary(make_store(data_dir, settings.chroma_url, minilm), data_dir, minilm)
    retriever = IndexRetriever(catalog, library)
    catalog.listeners.append(retriever.on_snapshot)  # opens aliased index versions ahead of requests
    policy = build_pipeline(settings, config, engine)
    # the policy in force follows policy:policies@production as it moves (no file watch, no restart)
    catalog.listeners.append(lambda snapshot: policy.follow(snapshot.aliases, snapshot.records))
    metrics.gauge(
        "opsgate_policy_reload_failed",
        "1 when the policy version promoted to production could not be applied (the previous one stays in force).",
        lambda: 1.0 if policy.reload_error else 0.0,
    )
    _limit_store_metrics(metrics, policy)
    protected = frozenset(config.governance.protected_aliases)
    traffic = TrafficStore(engine, config.traffic)
    recorder = TrafficRecorder(traffic, config.traffic)
    gateway = Gateway(
        catalog,
        writer,
        metrics,
        retriever,
        policy,
        protected_aliases=protected,
        limits=config.limits,
        traffic=recorder,
        shadow_in_flight=config.rollouts.shadow_max_in_flight,
    )
    shadows = gateway.shadows
    metrics.gauge("opsgate_shadow_in_flight", "Rollout shadow calls running now.", lambda: shadows.in_flight)
    metrics.gauge(
        "opsgate_shadow_dropped",
        "Sampled shadow calls dropped (shadow_max_in_flight reached).",
        lambda: shadows.dropped,
    )
    alerts = Alerts(config.alerts, egress, audit_tip=lambda: audit.anchored_tip(engine))
    return Parts(
        settings,
        config,
        engine,
        adapters,
        catalog,
        writer,
        metrics,
        gateway,
        alerts,
        retriever,
        policy,
        traffic,
    )


def _rollout_evaluator(parts: Parts) -> RolloutEvaluator:
    promotions = PromotionService(parts.engine, parts.config.governance)
    service = RolloutService(parts.engine, promotions)
    return RolloutEvaluator(service, tick_s=parts.config.rollouts.check_interval_s, notify=parts.alerts.emit)


async def _purge_traffic(store: TrafficStore, interval_s: float) -> None:
    """Delete stored calls past their retention, at start and then every `interval_s`."""
    while True:
        try:
            gone = await asyncio.to_thread(store.purge_expired)
            if gone:
                log.info("traffic store: deleted %d calls past their retention", gone)
        except SQLAlchemyError as exc:  # the database is down: the next round tries again
            log.warning("traffic store: purge failed (%s)", type(exc).__name__)
        await asyncio.sleep(interval_s)


def registered_name(catalog: Catalog, model: str) -> str | None:
    """`kind:name` of the registered artifact a caller's model name points to, or None (metrics label
    callers' names only when the registry knows them)."""
    try:
        ref = parse_ref(model)
    except OpsgateError:
        return None
    for kind in (ref.kind,) if ref.kind else ("router", "prompt"):
        if catalog.has(kind, ref.name):
            return f"{kind}:{ref.name}"
    return None


def _request_log_writer(
    config: GatewayConfig, engine: Engine, data_dir: Path, metrics: Metrics
) -> RequestLogWriter:
    rl = config.request_log
    writer = RequestLogWriter(
        engine,
        queue_size=rl.queue_size,
        batch_size=rl.batch_size,
        flush_interval_s=rl.flush_interval_s,
        spool_dir=data_dir / "spool" / "request-log" if rl.spool else None,
        spool_max_bytes=rl.spool_max_mb * 1024 * 1024,
        stop_deadline_s=rl.shutdown_deadline_s,
    )
    metrics.gauge(
        "opsgate_request_log_dropped",
        "Log rows dropped (queue full, or spool full).",
        lambda: writer.stats.dropped,
    )
    metrics.gauge("opsgate_request_log_backlog", "Log rows waiting in memory.", lambda: writer.backlog)
    metrics.gauge("opsgate_request_log_written", "Log rows written.", lambda: writer.stats.written)
    metrics.gauge(
        "opsgate_database_up",
        "1 while the request log's writes succeed; 0 from a failed write until one succeeds (the gateway"
        " keeps serving: /readyz says degraded).",
        lambda: 1.0 if writer.database_up else 0.0,
    )
    spool = writer.spool
    if spool is not None:
        metrics.gauge(
            "opsgate_request_log_spool_bytes", "Bytes of log rows in the spool.", lambda: spool.size
        )
        metrics.gauge(
            "opsgate_request_log_spool_rows",
            "Log rows in the spool, not yet in the database.",
            lambda: spool.rows,
        )
        metrics.gauge(
            "opsgate_request_log_spool_age_seconds",
            "Age of the oldest row in the spool (0 when empty).",
            spool.age_s,
        )
        metrics.gauge(
            "opsgate_request_log_spooled",
            "Log rows appended to the spool (all time).",
            lambda: writer.stats.spooled,
        )
        metrics.gauge(
            "opsgate_request_log_replayed",
            "Log rows replayed from the spool (all time).",
            lambda: writer.stats.replayed,
        )
    return writer


def _limit_store_metrics(metrics: Metrics, policy: Pipeline) -> None:
    metrics.gauge(
        "opsgate_limit_store_up",
        "1 while the store of rate limits and budgets (Redis, or memory) answers; 0 while it fails.",
        lambda: 1.0 if policy.store_state().get("up") else 0.0,
    )
    metrics.gauge(
        "opsgate_limit_store_fail_open",
        "1 when the policy's on_store_error is allow (a failing store lets requests through, uncounted);"
        " 0 when it is block (503).",
        lambda: 1.0 if policy.policy.spec.on_store_error == "allow" else 0.0,
    )
    metrics.gauge(
        "opsgate_limit_store_errors",
        "Limit checks that could not use the store (all time).",
        lambda: float(policy.store_state().get("errors", 0)),
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    apply_offline_env()
    tracing.setup()  # OpenTelemetry traces, when OTEL_EXPORTER_OTLP_ENDPOINT is set
    # OpenMP threads that sleep instead of spin: on a busy host one query embedding took 1.9 s, 22 ms so.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    settings = settings or Settings()
    config = settings.load_gateway_config()
    validate_policy_file(settings)  # a bad config/policies.yaml fails here, naming file, line and field
    alerts_file = settings.config_dir / ALERTS_FILE  # likewise config/alerts.yaml (used until registered)
    file_alerts = load_file_rules(settings.config_dir, settings.display_path(alerts_file))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = await asyncio.to_thread(prepare_database, settings)
        parts = build_parts(settings, config, engine)
        app.state.parts = parts
        app.state.gateway = parts.gateway
        judge = functools.partial(parts.gateway.system_chat, ONLINE_EVAL_PRINCIPAL)
        online = app.state.online_eval = online_eval.install(parts, judge)  # sampler; worker started below
        ml = app.state.ml = MLService.create(parts)  # classic models: cache, writer, monitor
        builder = parts.retrieval.library.builder(engine, settings.project_dir)
        await asyncio.to_thread(
            bootstrap_indexes, builder, actor="system:bootstrap", working_tree=settings.bootstrap_working_tree
        )  # first start only
        await parts.catalog.start()
        await parts.policy.start()  # Redis, or in-process budgets seeded from the request log
        parts.writer.start()
        online.start()
        ml.start()
        rollouts = app.state.rollouts = _rollout_evaluator(parts)
        rollouts.start()
        alerting = app.state.alerting = AlertEngine(
            engine, file_alerts, parts.alerts.egress, audit_tip=parts.alerts.audit_tip
        )
        alerting.start()  # alert rules (config/alerts.yaml, governed as alert:alerts)
        purge = asyncio.create_task(_purge_traffic(parts.traffic, config.traffic.purge_interval_s))
        app.state.ready = True
        try:
            yield
        finally:
            app.state.ready = False
            await rollouts.stop()
            await alerting.stop()
            await parts.gateway.shadows.stop()
            purge.cancel()
            await online.stop()
            await ml.stop()
            await parts.writer.stop()
            await parts.catalog.stop()
            await parts.policy.stop()
            await parts.retrieval.stop()
            await parts.adapters.close()
            await parts.alerts.close()
            engine.dispose()

    app = FastAPI(
        title="opsgate",
        version=__version__,
        description="A ModelOps gateway: OpenAI-compatible serving of governed artifacts.",
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry instrumentation is off: opsgate opens the request's span itself (with
        # the GenAI attributes, monitoring/tracing.py), so FastAPI's would be a second server span per
        # request, and while tracing is off it still asked the OpenTelemetry providers on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.state.ready = False
    app.state.database_outage = Outage("admin API: database", log, every_s=30)
    app.add_middleware(
        GatewayMiddleware,
        max_body_bytes=config.server.max_body_bytes,
        body_timeout_s=config.server.body_timeout_s,
        send_timeout_s=config.server.send_timeout_s,
    )
    # The hot routes first: routes are matched in this order, so every router ahead of chat completions
    # costs each chat request a match attempt per route (methods tell GET and POST /v1/chat/completions
    # apart, whatever the order).
    app.include_router(openai.router)
    app.include_router(stored.router)
    app.include_router(completions.router)
    app.include_router(responses.router)
    app.include_router(conversations.router)
    app.include_router(anthropic.router)
    app.include_router(health.router)
    app.include_router(metrics_api.router)
    app.include_router(ml_api.router)
    app.include_router(admin.router)
    app.include_router(rollouts_api.router)
    app.include_router(alerts_api.router)
    ui.install(app, settings.resolved_data_dir())  # the dashboard at /ui
    _install_error_handlers(app)
    openapi_spec.install(app, extra_params=config.egress.request_params)
    _serve_lean(app, (openai.router, completions.router, responses.router, anthropic.router), HOT_ROUTES)
    return app


# The calls applications make most: served by a plain Starlette route ahead of FastAPI's.
HOT_ROUTES = (
    ("/v1/chat/completions", "POST"),
    ("/v1/embeddings", "POST"),
    ("/v1/responses", "POST"),
    ("/v1/messages", "POST"),
    ("/v1/completions", "POST"),
)


def _serve_lean(app: FastAPI, routers: tuple[APIRouter, ...], hot: tuple[tuple[str, str], ...]) -> None:
    """Serve the hot endpoints through a plain Starlette route placed first, with the same handler.

    These handlers take the request alone and read their body themselves, so FastAPI's per-request work
    around them (dependency solving, its scope bookkeeping, an exit stack) does nothing for them, yet cost
    each call about 60 Python function calls. FastAPI's route stays in place for the OpenAPI document;
    the error handlers are the app's, so answers are the same."""
    lean: list[BaseRoute] = []
    for route in (r for router in routers for r in router.routes):
        if not isinstance(route, APIRoute) or not route.methods:
            continue
        for path, method in hot:
            if route.path == path and method in route.methods:
                params = list(inspect.signature(route.endpoint).parameters)
                if params != ["request"]:  # a handler FastAPI must feed stays with FastAPI
                    continue
                lean.append(Route(path, route.endpoint, methods=[method], include_in_schema=False))
    if len(lean) != len(hot):
        raise RuntimeError(f"hot routes not found: {sorted(hot)} (found {[r.path for r in lean]})")  # type: ignore[attr-defined]
    app.router.routes[:0] = lean


def _error_response(exc: OpsgateError) -> Response:
    headers = dict(exc.headers)
    retry_after = getattr(exc, "retry_after_s", None)
    # a 429 always says when to come back (1 s when the upstream did not say); a 503 when it is known
    if exc.status in (429, 503) and (retry_after or exc.status == 429) and "Retry-After" not in headers:
        headers["Retry-After"] = str(max(1, int((retry_after or 1) + 0.999)))
    return Response(error_body(exc), status_code=exc.status, media_type="application/json", headers=headers)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> str:
    """Every method some route serves on this path (Starlette names only the first route's, and GET and
    POST of one path are two routes): a method is allowed when a route fully matches it."""
    allowed = [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL
            for route in request.app.router.routes
        )
    ]
    return ", ".join(allowed)


def _install_error_handlers(app: FastAPI) -> None:
    async def opsgate_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, OpsgateError)
        return _error_response(exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            return _error_response(NotFound("no such endpoint; see /docs for the API", code="unknown_url"))
        # keep the framework's headers: a 405 says which methods are allowed (`Allow`)
        err = OpsgateError(str(exc.detail), code="http_error", headers=dict(exc.headers or {}))
        if exc.status_code == 405:
            err.code = "method_not_allowed"
            err.headers["Allow"] = _allowed_methods(request)
        err.status = exc.status_code
        err.type = "invalid_request_error"
        return _error_response(err)

    async def validation_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first["loc"][1:]) or None
        msg = str(first["msg"])
        return _error_response(InvalidFields(f"{param}: {msg}" if param else msg, param=param))

    async def database_error(request: Request, exc: Exception) -> Response:
        unavailable = database_unavailable(exc)
        if unavailable is not None:  # the database is away: 503 + Retry-After, one log line per outage
            outage = getattr(request.app.state, "database_outage", None)
            if outage is not None:
                outage.failed(exc, f"{request.method} {request.url.path} answered 503")
            return _error_response(unavailable)
        log.error("database error on %s %s: %s", request.method, request.url.path, describe(exc))
        return _error_response(OpsgateError(f"internal error ({type(exc).__name__})"))

    app.add_exception_handler(SQLAlchemyError, database_error)
    app.add_exception_handler(OpsgateError, opsgate_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
