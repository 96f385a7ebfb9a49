"""Online evaluation: score a deterministic sample of live answers, off the request path.

    request ─► capture middleware ─► app ─► Gateway.finish ─► finish hook: sampled? remember versions
                  │ (body bytes, only for ids under the highest sample rate)        │
                  └──── response sent ─► offer(job) ─► bounded queue ─► worker: metrics, store,
                                          (full: drop, counted)                 rolling means, alerts

- Sampling is a pure function of the request id (`sampled(id, rate)`: sha256 of the id against the rate),
  so every evaluator, replica or re-scoring job picks the same requests, and a request sampled at 10% is
  also sampled at 20%.
- On the request path there is only: one hash of the id, appending body chunks to a list for sampled
  requests, and a `put_nowait`. Scoring, judge calls, database writes (batched) and alerts run in the
  worker.
- A RAG prompt's retrieved chunk texts are recorded by wrapping the retriever (only for sampled requests),
  so faithfulness can be judged without asking the client to take the context in its answer.
- Rolling means per (prompt, version, metric) over the prompt's `online_eval.window` are exposed as the
  Prometheus gauge `opsgate_online_eval_rolling_mean`; when a full window's mean falls under the prompt's
  threshold for that metric, an `online_eval` alert goes to the webhooks (once, until it recovers).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import Counter, Gauge
from sqlalchemy import Engine, func, insert, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.db.models import ArtifactVersion, OnlineEvalScore
from gateway.evaluation.config import OnlineEvalConfig
from gateway.evaluation.metrics import registry
from gateway.evaluation.metrics.base import EvalCase, EvalContext, Metric, TargetOutput
from gateway.evaluation.target import EVAL_HEADER
from gateway.registry.specs import OnlineEvalSpec, PromptSpec
from gateway.usage import message_text

log = logging.getLogger("opsgate.online_eval")
_SCALE = float(2**64)
PENDING_LIMIT = 10_000  # sampled requests whose response is still being sent


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
    retrieved: list[str] | None = None
    question: str | None = None
    request: bytes = b""
    response: bytes = b""


@dataclass
class OnlineStats:
    sampled: int = 0
    queued: int = 0
    dropped: int = 0
    scored: int = 0
    failed: int = 0


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
    """The sampler (finish hook + capture middleware + retriever wrapper) and its background worker."""

    def __init__(
        self,
        config: OnlineEvalConfig,
        *,
        catalog: Any,
        engine: Engine,
        alerts: Any,
        metrics: Any,
        embedder: Any,
        key_file: Path | None = None,
    ) -> None:
        self.config = config
        self.key_file = key_file
        self.catalog = catalog
        self.engine = engine
        self.alerts = alerts
        self.embedder = embedder
        self.stats = OnlineStats()
        self.rolling = RollingMeans()
        self.max_rate = 0.0
        self.queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=config.queue_size)
        self._pending: OrderedDict[str, Job] = OrderedDict()
        self._retrieved: OrderedDict[str, tuple[str, list[str]]] = OrderedDict()
        self._alerting: set[tuple[str, int, str]] = set()
        self._metrics: dict[tuple[str, int], dict[str, Metric]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._rows: list[dict[str, Any]] = []  # scores waiting for the next batch write
        self._flushed = time.monotonic()
        self._connection: Any = None
        self.app: Any = None
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

    def should_capture(self, request_id: str) -> bool:
        return self.max_rate > 0 and sampled(request_id, self.max_rate)

    def on_finish(self, call: Any, row: Any) -> None:
        """Finish hook: remember a sampled answer of a prompt with online_eval until its body is sent."""
        if row.status != 200 or self.max_rate <= 0:
            return
        prompt = next((a for a in row.artifacts if a.startswith("prompt:")), None)
        if prompt is None:
            return
        name, _, rest = prompt[len("prompt:") :].partition("@")
        version, _, _short_hash = rest.partition("#")
        record = self.catalog.snapshot.records.get(("prompt", name, int(version)))
        if record is None:
            return
        spec: PromptSpec = self.catalog.prompt_spec(record)
        online = spec.online_eval
        if online is None or not sampled(call.request_id, online.sample_rate):
            return
        question, retrieved = self._retrieved.pop(call.request_id, (None, None))
        self._pending[call.request_id] = Job(
            call.request_id,
            row.ts,
            name,
            int(version),
            record.content_hash,
            list(row.artifacts),
            online,
            row.latency_ms,
            row.cost_usd,
            row.tokens_out,
            retrieved,
            question,
        )
        while len(self._pending) > PENDING_LIMIT:
            self._pending.popitem(last=False)

    def offer(self, request_id: str, request: bytes, response: bytes) -> None:
        """The response was sent: queue the job if the finish hook sampled it (never blocks; drops when full)."""
        job = self._pending.pop(request_id, None)
        if job is None:
            return
        job.request, job.response = request, response
        self.stats.sampled += 1
        self._counter.labels("sampled").inc()
        try:
            self.queue.put_nowait(job)
            self.stats.queued += 1
        except asyncio.QueueFull:
            self.stats.dropped += 1
            self._counter.labels("dropped").inc()

    def wrap_retriever(self, inner: Any) -> Any:
        return RecordingRetriever(inner, self)

    def record_retrieval(self, request_id: str, question: str, texts: list[str]) -> None:
        self._retrieved[request_id] = (question, texts)
        while len(self._retrieved) > PENDING_LIMIT:
            self._retrieved.popitem(last=False)

    # -- the worker --------------------------------------------------------------------------------------

    def start(self, app: Any) -> None:
        self.app = app
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
            except SQLAlchemyError:
                log.exception("online eval: %d scores could not be written", len(rows))

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
        """The judge is a router of this very gateway, called over ASGI (no socket) with a configured key."""
        if self._connection is None and self.app is not None:
            import httpx2
            from openai import AsyncOpenAI

            from gateway.evaluation.target import IN_PROCESS_URL, Connection

            key = self._api_key()
            if key is None:
                return None
            http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=self.app), timeout=120)
            client = AsyncOpenAI(base_url=IN_PROCESS_URL, api_key=key, max_retries=1, http_client=http)
            self._connection = Connection(client, IN_PROCESS_URL, key, mode="online")
        return self._connection

    def _api_key(self) -> str | None:
        if self.config.api_key_env:
            return os.environ.get(self.config.api_key_env)
        if self.key_file is not None and self.key_file.exists():
            return self.key_file.read_text(encoding="utf-8").strip()
        log.error("online eval: no API key for judge calls (set evaluation.online.api_key_env)")
        return None

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


class RecordingRetriever:
    """Wraps the gateway's retriever: keeps the chunk texts of sampled RAG requests for the worker."""

    def __init__(self, inner: Any, evaluator: OnlineEvaluator) -> None:
        self.inner = inner
        self.evaluator = evaluator

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def retrieve(
        self, call: Any, spec: PromptSpec, variables: dict[str, Any], messages: list[Any]
    ) -> list[dict[str, Any]]:
        chunks: list[dict[str, Any]] = await self.inner.retrieve(call, spec, variables, messages)
        online = spec.online_eval
        if online is not None and sampled(call.request_id, online.sample_rate):
            question = _last_user(messages) or " ".join(str(v) for v in variables.values())
            self.evaluator.record_retrieval(
                call.request_id, question, [str(c.get("text", "")) for c in chunks]
            )
        return chunks


class CaptureMiddleware:
    """Pure ASGI: tees request and response bodies of chat requests whose id is under the highest sample
    rate, and hands them to the app's evaluator (`app.state.online_eval`) once the response is sent.
    Everything else passes untouched. Sits inside GatewayMiddleware, which gives the request its id."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = scope.get("state", {}).get("request_id") if scope["type"] == "http" else None
        evaluator: OnlineEvaluator | None = (
            getattr(scope["app"].state, "online_eval", None) if request_id else None
        )
        if (
            request_id is None
            or evaluator is None
            or scope.get("path") != "/v1/chat/completions"
            or not evaluator.should_capture(request_id)
            or any(k == EVAL_HEADER.encode() for k, _ in scope.get("headers", ()))
        ):
            await self.app(scope, receive, send)
            return
        request: list[bytes] = []
        response: list[bytes] = []

        async def tee_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                request.append(message.get("body", b""))
            return message

        async def tee_send(message: Message) -> None:
            if message["type"] == "http.response.body":
                response.append(message.get("body", b""))
            await send(message)

        await self.app(scope, tee_receive, tee_send)
        evaluator.offer(request_id, b"".join(request), b"".join(response))


# -- turning a captured exchange into a case -------------------------------------------------------------


def _last_user(messages: list[Any]) -> str:
    for m in reversed(messages or []):
        if isinstance(m, dict) and m.get("role") == "user":
            return message_text(m)
    return ""


def answer_and_citations(body: bytes) -> tuple[str, list[dict[str, Any]]]:
    """The answer text and citations of a chat response, plain JSON or an SSE stream."""
    if body.lstrip().startswith(b"data:"):
        pieces: list[str] = []
        citations: list[dict[str, Any]] = []
        for line in body.splitlines():
            if not line.startswith(b"data:") or line.strip() == b"data: [DONE]":
                continue
            try:
                chunk = orjson.loads(line[5:])
            except orjson.JSONDecodeError:
                continue
            citations = chunk.get("citations") or citations
            for choice in chunk.get("choices") or ():
                content = (choice.get("delta") or {}).get("content")
                if isinstance(content, str):
                    pieces.append(content)
        return "".join(pieces), citations
    data = orjson.loads(body)
    choices = data.get("choices") or [{}]
    return str((choices[0].get("message") or {}).get("content") or ""), list(data.get("citations") or [])


def _case_and_output(job: Job) -> tuple[EvalCase, TargetOutput]:
    request = orjson.loads(job.request) if job.request else {}
    answer, citations = answer_and_citations(job.response)
    question = job.question or _last_user(request.get("messages") or [])
    if not question:
        variables = request.get("prompt_variables") or {}
        question = " ".join(str(v) for v in variables.values())
    contexts = job.retrieved
    if contexts is None and citations and all(isinstance(c.get("text"), str) for c in citations):
        contexts = [c["text"] for c in citations]
    case = EvalCase(id=job.request_id, question=question or "")
    output = TargetOutput(
        answer=answer,
        contexts=contexts,
        citations=citations,
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


def install(parts: Any) -> OnlineEvaluator:
    """Wire online evaluation into the app's parts: finish hook, catalog listener, retriever wrapper."""
    evaluator = OnlineEvaluator(
        parts.config.evaluation.online,
        catalog=parts.catalog,
        engine=parts.engine,
        alerts=parts.alerts,
        metrics=parts.metrics,
        embedder=parts.retrieval.library.minilm,
        key_file=parts.settings.resolved_data_dir() / "admin.key",
    )
    parts.gateway.finish_hooks.append(evaluator.on_finish)
    parts.catalog.listeners.append(evaluator.on_snapshot)
    if parts.gateway.retriever is not None:
        parts.gateway.retriever = evaluator.wrap_retriever(parts.gateway.retriever)
    parts.metrics.gauge(
        "opsgate_online_eval_backlog", "Sampled answers waiting to be scored.", evaluator.queue.qsize
    )
    return evaluator
