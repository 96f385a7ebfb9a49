"""Online evaluation: score a deterministic sample of live answers, off the request path.

    Gateway.finish ─► finish hook (`on_finish`): a prompt with online_eval, sampled? ─► Job from the call
                      (question, answer text, retrieved chunks, versions: what the call already holds)
                      ─► bounded queue (full: drop, counted) ─► worker: metrics, store, rolling means,
                      alerts

- Sampling is a pure function of the request id (`sampled(id, rate)`: sha256 of the id against the rate),
  so every evaluator, replica or re-scoring job picks the same requests, and a request sampled at 10% is
  also sampled at 20%.
- On the request path there is only one hash of the id and a `put_nowait`. Scoring, judge calls,
  database writes (batched) and alerts run in the worker. Evaluator traffic (a request marked with the
  eval-run header) is never sampled.
- LLM-judged metrics call the judge router through `judge` (a callable the app factory passes in that
  runs a chat body through the gateway's routing as the system principal `system:online-eval`): no
  socket, no API key.
- Rolling means per (prompt, version, metric) over the prompt's `online_eval.window` are exposed as the
  Prometheus gauge `opsgate_online_eval_rolling_mean`; when a full window's mean falls under the prompt's
  threshold for that metric, an `online_eval` alert goes to the webhooks (once, until it recovers).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from prometheus_client import Counter, Gauge
from sqlalchemy import Engine, func, insert, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from gateway.db.models import ArtifactVersion, OnlineEvalScore
from gateway.db.outage import Outage, database_unavailable
from gateway.errors import OpsgateError
from gateway.evaluation.config import OnlineEvalConfig
from gateway.evaluation.metrics import registry
from gateway.evaluation.metrics.base import EvalCase, EvalContext, Metric, TargetOutput
from gateway.prompts.spec import OnlineEvalSpec, PromptSpec

log = logging.getLogger("opsgate.online_eval")
_SCALE = float(2**64)
# A chat body -> the judge router's chat.completion (see `install`)
JudgeCall = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def prompt_spec_problems(spec: PromptSpec) -> list[tuple[tuple[int | str, ...], str]]:
    """The prompt kind's load-time check (gateway/kinds.py): online metrics exist and suit live traffic,
    which has no reference answers; judged metrics need a judge."""
    if spec.online_eval is None:
        return []
    problems: list[tuple[tuple[int | str, ...], str]] = []
    metrics = registry()
    for i, name in enumerate(spec.online_eval.metrics):
        loc = ("online_eval", "metrics", i)
        try:
            definition = metrics.find(name)
        except ValueError as exc:  # an unknown metric: the message lists the known ones
            problems.append((loc, str(exc)))
            continue
        if not definition.reference_free:
            problems.append(
                (loc, f"metric {name!r} needs reference answers, which live traffic does not have")
            )
        elif definition.needs_judge and not spec.online_eval.judge:
            problems.append((loc, f"metric {name!r} is judged by an LLM: set judge to a chat router"))
    return problems


def sampled(request_id: str, rate: float) -> bool:
    """Deterministic by request id: the same id and rate always give the same answer."""
    if rate <= 0:
        return False
    if rate >= 1:
        return True
    point = int.from_bytes(hashlib.sha256(request_id.encode()).digest()[:8], "big") / _SCALE
    return point < rate


@dataclass
class Job:
    request_id: str
    ts: datetime
    prompt: str
    version: int
    content_hash: str
    versions: list[str]
    spec: OnlineEvalSpec
    latency_ms: float
    cost_usd: float | None
    tokens_out: int | None
    question: str = ""
    answer: str = ""
    retrieved: list[str] | None = None
    citations: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class OnlineStats:
    sampled: int = 0
    queued: int = 0
    dropped: int = 0
    scored: int = 0
    failed: int = 0
    unwritten: int = 0  # scores the database did not take (it was away)


class RollingMeans:
    """Mean of the last `window` scores per (prompt, version, metric)."""

    def __init__(self) -> None:
        self._windows: dict[tuple[str, int, str], deque[float]] = {}

    def add(self, key: tuple[str, int, str], value: float, window: int) -> tuple[float, int]:
        scores = self._windows.get(key)
        if scores is None or scores.maxlen != window:
            scores = self._windows[key] = deque(scores or (), maxlen=window)
        scores.append(value)
        return sum(scores) / len(scores), len(scores)


class OnlineEvaluator:
    """The sampler (a finish hook) and its background worker."""

    def __init__(
        self,
        config: OnlineEvalConfig,
        *,
        catalog: Any,
        engine: Engine,
        alerts: Any,
        metrics: Any,
        embedder: Any,
        judge: JudgeCall | None = None,
    ) -> None:
        self.config = config
        self.judge = judge
        self.catalog = catalog
        self.engine = engine
        self.alerts = alerts
        self.embedder = embedder
        self.stats = OnlineStats()
        self.rolling = RollingMeans()
        self.max_rate = 0.0
        self.queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=config.queue_size)
        self._alerting: set[tuple[str, int, str]] = set()
        self._metrics: dict[tuple[str, int], dict[str, Metric]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._rows: list[dict[str, Any]] = []  # scores waiting for the next batch write
        self._flushed = time.monotonic()
        self._outage = Outage("online eval: database", log)  # one line per change of state
        self._connection: Any = None
        self._gauge = Gauge(
            "opsgate_online_eval_rolling_mean",
            "Rolling mean of online eval scores, per prompt version and metric.",
            ["prompt", "version", "metric"],
            registry=metrics.registry,
        )
        self._counter = Counter(
            "opsgate_online_eval",
            "Online eval: requests sampled, dropped (queue full), scored, failed.",
            ["outcome"],
            registry=metrics.registry,
        )

    # -- the request path ---------------------------------------------------------------------------

    def on_snapshot(self, snapshot: Any) -> None:
        """Catalog listener: the highest sample rate of any prompt version (what the middleware captures)."""
        rates = [
            float(r.spec["online_eval"].get("sample_rate", 0))
            for (kind, _, _), r in snapshot.records.items()
            if kind == "prompt" and isinstance(r.spec.get("online_eval"), dict)
        ]
        self.max_rate = max(rates, default=0.0) if self.config.enabled else 0.0

    def on_finish(self, call: Any, row: Any) -> None:
        """Finish hook (a `gateway.flow.call.Call` and its log row): queue a sampled answer of a prompt
        with online_eval, built from what the call holds. Never blocks; drops when the queue is full."""
        if row.status != 200 or self.max_rate <= 0 or call.extra.get("eval_run"):
            return
        prompt = next((ref for ref in call.artifacts if ref.kind == "prompt"), None)
        if prompt is None or not sampled(call.request_id, self.max_rate):
            return
        record = self.catalog.snapshot.records.get(("prompt", prompt.name, prompt.version))
        if record is None:
            return
        spec: PromptSpec = self.catalog.prompt_spec(record)
        online = spec.online_eval
        if online is None or not sampled(call.request_id, online.sample_rate):
            return
        retrieval = call.retrieval
        job = Job(
            call.request_id,
            row.ts,
            prompt.name,
            prompt.version,
            record.content_hash,
            list(row.artifacts),
            online,
            row.latency_ms,
            row.cost_usd,
            row.tokens_out,
            question=call.question or "",
            answer=call.answer or "",
            retrieved=retrieval.texts() if retrieval is not None else None,
            citations=retrieval.citations(include_text=False) if retrieval is not None else [],
        )
        self.stats.sampled += 1
        self._counter.labels("sampled").inc()
        try:
            self.queue.put_nowait(job)
            self.stats.queued += 1
        except asyncio.QueueFull:
            self.stats.dropped += 1
            self._counter.labels("dropped").inc()

    # -- the worker --------------------------------------------------------------------------------------

    def start(self) -> None:
        for i in range(self.config.workers):
            self._tasks.append(asyncio.create_task(self._work(), name=f"opsgate-online-eval-{i}"))

    async def stop(self, timeout_s: float = 5.0) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.queue.join(), timeout=timeout_s)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.flush()
        if self._connection is not None:
            await self._connection.client.close()

    async def _work(self) -> None:
        """Score jobs as they come; write their rows in batches (by size, or after flush_interval_s)."""
        interval = self.config.flush_interval_s
        while True:
            try:
                job = await asyncio.wait_for(self.queue.get(), timeout=interval)
            except TimeoutError:
                await self.flush()
                continue
            try:
                self._rows.extend(await self.process(job))
                self.stats.scored += 1
                self._counter.labels("scored").inc()
            except Exception:  # one bad job must not stop the worker
                self.stats.failed += 1
                self._counter.labels("failed").inc()
                log.exception("online eval of %s failed", job.request_id)
            finally:
                self.queue.task_done()
            if len(self._rows) >= self.config.batch_size or time.monotonic() - self._flushed > interval:
                await self.flush()

    async def flush(self) -> None:
        rows, self._rows = self._rows, []
        self._flushed = time.monotonic()
        if rows:
            try:
                await asyncio.to_thread(self._store, rows)
            except SQLAlchemyError as exc:
                if database_unavailable(exc) is None:
                    log.exception("online eval: %d scores could not be written", len(rows))
                else:  # dropped (counted): scores are samples, the request log keeps every answer
                    self.stats.unwritten += len(rows)
                    self._outage.failed(exc, f"{self.stats.unwritten} scores not written so far")
            else:
                self._outage.recovered()

    async def process(self, job: Job) -> list[dict[str, Any]]:
        """Score one sampled answer; update rolling means and alerts; return its rows for the store."""
        ctx = EvalContext(*_case_and_output(job))
        scores: dict[str, float | None] = {}
        errors: dict[str, str] = {}
        for name, metric in self._metrics_for(job).items():
            try:
                scores[name] = await metric.evaluate(ctx)
            except Exception as exc:  # noqa: BLE001  a judge failure is recorded with the score
                scores[name], errors[name] = None, f"{type(exc).__name__}: {exc}"[:1000]
        for name, score in scores.items():
            if score is not None:
                self._observe(job, name, score)
        return [
            {
                "request_id": job.request_id,
                "ts": job.ts,
                "prompt": job.prompt,
                "prompt_version": job.version,
                "prompt_hash": job.content_hash,
                "versions": job.versions,
                "metric": name,
                "score": score,
                "error": errors.get(name),
            }
            for name, score in scores.items()
        ]

    def _metrics_for(self, job: Job) -> dict[str, Metric]:
        key = (job.prompt, job.version)
        built = self._metrics.get(key)
        if built is None:
            from gateway.evaluation.runner import RunResources

            resources = RunResources(self._judge_connection(), job.spec.judge, self.embedder)
            reg = registry()
            built = {}
            for name in job.spec.metrics:
                try:
                    built[name] = reg.build(name, {}, resources)
                except Exception as exc:  # noqa: BLE001  e.g. a judge metric with no judge: log, skip
                    log.error(
                        "online eval of prompt:%s@%s: metric %s: %s", job.prompt, job.version, name, exc
                    )
            self._metrics[key] = built
        return built

    def _judge_connection(self) -> Any:
        """An openai client whose requests go straight to `judge` (the judge router, through the
        gateway's routing): ragas judges with the official client, with no socket and no key."""
        if self._connection is None and self.judge is not None:
            import httpx2
            from openai import AsyncOpenAI

            from gateway.evaluation.target import IN_PROCESS_URL, Connection

            judge = self.judge

            async def handle(request: httpx2.Request) -> httpx2.Response:
                import orjson

                try:
                    answer = await judge(orjson.loads(request.content or b"{}"))
                except OpsgateError as exc:  # the judge's refusal as the gateway would answer it, so the
                    # score's error names it (not "Connection error", as an exception in a transport reads)
                    status, answer = exc.status, exc.to_openai()
                else:
                    status = 200
                return httpx2.Response(
                    status, content=orjson.dumps(answer), headers={"content-type": "application/json"}
                )

            http = httpx2.AsyncClient(transport=httpx2.MockTransport(handle), timeout=120)
            client = AsyncOpenAI(
                base_url=IN_PROCESS_URL, api_key="in-process", max_retries=1, http_client=http
            )
            self._connection = Connection(client, IN_PROCESS_URL, "", mode="online")
        return self._connection

    def _store(self, rows: list[dict[str, Any]]) -> None:
        with Session(self.engine) as s, s.begin():
            s.execute(insert(OnlineEvalScore), rows)

    def _observe(self, job: Job, metric: str, score: float) -> None:
        key = (job.prompt, job.version, metric)
        mean, n = self.rolling.add(key, score, job.spec.window)
        self._gauge.labels(job.prompt, str(job.version), metric).set(mean)
        threshold = job.spec.thresholds.get(metric)
        if threshold is None or n < job.spec.window:
            return
        if mean < threshold and key not in self._alerting:
            self._alerting.add(key)
            self.alerts.emit(
                "online_eval",
                {
                    "prompt": f"prompt:{job.prompt}@{job.version}",
                    "prompt_hash": job.content_hash,
                    "metric": metric,
                    "rolling_mean": mean,
                    "threshold": threshold,
                    "window": job.spec.window,
                    "last_request_id": job.request_id,
                },
            )
        elif mean >= threshold:
            self._alerting.discard(key)


def _case_and_output(job: Job) -> tuple[EvalCase, TargetOutput]:
    case = EvalCase(id=job.request_id, question=job.question)
    output = TargetOutput(
        answer=job.answer,
        contexts=job.retrieved,
        citations=job.citations,
        request_id=job.request_id,
        versions=job.versions,
        latency_ms=job.latency_ms,
        cost_usd=job.cost_usd,
        tokens_out=job.tokens_out,
    )
    return case, output


# -- reading back --------------------------------------------------------------------------------------


def rolling_means_from_db(engine: Engine, *, prompt: str | None = None) -> list[dict[str, Any]]:
    """Per (prompt, version, metric): the mean of the last `window` scores (the version's online_eval)."""
    out: list[dict[str, Any]] = []
    with Session(engine) as s:
        q = select(OnlineEvalScore.prompt, OnlineEvalScore.prompt_version, OnlineEvalScore.metric).distinct()
        if prompt:
            q = q.where(OnlineEvalScore.prompt == prompt)
        for name, version, metric in sorted(s.execute(q).tuples()):
            spec = s.scalar(
                select(ArtifactVersion.spec).where(
                    ArtifactVersion.kind == "prompt",
                    ArtifactVersion.name == name,
                    ArtifactVersion.version == version,
                )
            )
            online = (spec or {}).get("online_eval") or {}
            window = int(online.get("window", 100))
            scores = s.scalars(
                select(OnlineEvalScore.score)
                .where(
                    OnlineEvalScore.prompt == name,
                    OnlineEvalScore.prompt_version == version,
                    OnlineEvalScore.metric == metric,
                    OnlineEvalScore.score.is_not(None),
                )
                .order_by(OnlineEvalScore.ts.desc(), OnlineEvalScore.id.desc())
                .limit(window)
            ).all()
            total = s.scalar(
                select(func.count()).where(
                    OnlineEvalScore.prompt == name,
                    OnlineEvalScore.prompt_version == version,
                    OnlineEvalScore.metric == metric,
                )
            )
            values = [float(v) for v in scores if v is not None]
            out.append(
                {
                    "prompt": name,
                    "version": version,
                    "metric": metric,
                    "mean": sum(values) / len(values) if values else None,
                    "n": len(values),
                    "window": window,
                    "total": int(total or 0),
                    "threshold": (online.get("thresholds") or {}).get(metric),
                }
            )
    return out


def install(parts: Any, judge: JudgeCall | None) -> OnlineEvaluator:
    """Wire online evaluation into the app's parts (gateway.app.Parts): finish hook, catalog listener."""
    evaluator = OnlineEvaluator(
        parts.config.evaluation.online,
        catalog=parts.catalog,
        engine=parts.engine,
        alerts=parts.alerts,
        metrics=parts.metrics,
        embedder=parts.retrieval.library.minilm,
        judge=judge,
    )
    parts.gateway.finish_hooks.append(evaluator.on_finish)
    parts.catalog.listeners.append(evaluator.on_snapshot)
    parts.metrics.gauge(
        "opsgate_online_eval_backlog", "Sampled answers waiting to be scored.", evaluator.queue.qsize
    )
    return evaluator
