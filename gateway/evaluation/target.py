"""Calling the target through opsgate with the official `openai` client, in one of two ways:

- in-process: the app is built here (`create_app`, its lifespan run) and called over ASGI, no socket;
- `--url`: a running gateway, over HTTP.

Either way the request takes the full gateway path (auth, policies, retrieval, routing, request log), the
target is pinned to one version (an alias is resolved once, before the run), and each answer brings back
its request id, the versions that served it (`x-opsgate-versions`) and, for RAG prompts, its citations.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from gateway.db.models import RequestLog
from gateway.evaluation.metrics.base import EvalCase, TargetOutput
from gateway.evaluation.spec import SuiteSpec, read_suite_template
from gateway.prompts.render import render_template
from gateway.registry.refs import parse_ref
from gateway.registry.store import VersionRecord, VersionStore

IN_PROCESS_URL = "http://opsgate.in-process/v1"
EVAL_HEADER = "x-opsgate-eval-run"  # marks evaluator traffic (the online sampler leaves it alone)


def resolve_target(engine: Engine, text: str, *, default_kind: str = "prompt") -> VersionRecord:
    """`prompt:x`, `prompt:x@7`, `prompt:x@staging` -> the exact version (default alias: production)."""
    return VersionStore(engine).resolve(parse_ref(text, default_kind=default_kind))


@dataclass
class Connection:
    """An openai AsyncOpenAI client on opsgate, plus what the in-process app knows of each request."""

    client: Any
    base_url: str
    api_key: str
    mode: str
    served: dict[str, Any] = field(default_factory=dict)  # request id -> log row (in-process only)


@asynccontextmanager
async def connect(
    *, url: str | None, api_key: str, app: Callable[[], Any] | None = None, timeout_s: float = 60
) -> AsyncIterator[Connection]:
    """A running gateway at `url`, or else the gateway `app()` builds, run in process (over ASGI)."""
    import httpx2
    from openai import AsyncOpenAI

    if url:
        base = url.rstrip("/")
        base = base if base.endswith("/v1") else base + "/v1"
        async with AsyncOpenAI(base_url=base, api_key=api_key, max_retries=0, timeout=timeout_s) as client:
            yield Connection(client, base, api_key, mode=base)
        return
    if app is None:
        raise ValueError("connect() needs a url or an app factory")
    gateway_app = app()
    async with gateway_app.router.lifespan_context(gateway_app):
        served: dict[str, Any] = {}
        gateway_app.state.gateway.finish_hooks.append(
            lambda call, row: served.__setitem__(call.request_id, row)
        )
        http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=gateway_app), timeout=timeout_s)
        async with AsyncOpenAI(
            base_url=IN_PROCESS_URL, api_key=api_key, max_retries=0, timeout=timeout_s, http_client=http
        ) as client:
            yield Connection(client, IN_PROCESS_URL, api_key, mode="in-process", served=served)


def render_case_messages(spec: SuiteSpec, case: EvalCase, suite_dir: Path) -> list[dict[str, str]]:
    """The suite's own messages for one case: an author's templates, rendered in the sandbox within the
    same bounds as a prompt's (limits.render defaults: time, sizes, integer digits, loops)."""
    values = {
        "id": case.id,
        "question": case.question,
        "reference": case.reference,
        "references": list(case.references),
        "reference_contexts": list(case.reference_contexts),
        "reference_context_ids": list(case.reference_context_ids),
        "variables": case.variables,
        "metadata": case.metadata,
    }
    out = []
    for i, message in enumerate(spec.messages):
        source = message.content
        if source is None:
            assert message.file is not None
            source = read_suite_template(suite_dir, message.file)
        where = f"suite {spec.name!r} message {i}"
        out.append({"role": message.role, "content": render_template(source, values, where=where)})
    return out


@dataclass
class TargetCaller:
    """One suite's calls: the pinned model string and how a case becomes a request."""

    connection: Connection
    spec: SuiteSpec
    record: VersionRecord
    suite_dir: Path
    run_id: str

    @property
    def model(self) -> str:
        return f"{self.record.kind}:{self.record.name}@{self.record.version}"

    def request(self, case: EvalCase) -> tuple[list[dict[str, str]], dict[str, Any]]:
        messages = render_case_messages(self.spec, case, self.suite_dir)
        extra: dict[str, Any] = dict(self.spec.params)
        if self.record.kind == "prompt":
            variables = {**self.spec.variables, **case.variables}
            if self.spec.question_variable:
                variables[self.spec.question_variable] = case.question
            elif not messages:
                messages = [{"role": "user", "content": case.question}]
            if variables:
                extra["prompt_variables"] = variables
            if self.spec.include_context:
                extra["opsgate"] = {"include_context": True}
        return messages, extra

    async def call(self, case: EvalCase) -> TargetOutput:
        from openai import APIConnectionError, APIStatusError, OpenAIError

        messages, extra = self.request(case)
        started = time.perf_counter()
        try:
            raw = await self.connection.client.chat.completions.with_raw_response.create(
                model=self.model,
                messages=messages,
                extra_body=extra or None,
                extra_headers={EVAL_HEADER: self.run_id},
            )
            completion = raw.parse()
        except APIStatusError as exc:
            return TargetOutput(
                request_id=exc.response.headers.get("x-opsgate-request-id"),
                latency_ms=(time.perf_counter() - started) * 1000,
                error=f"HTTP {exc.status_code}: {_message(exc)}",
            )
        except (APIConnectionError, OpenAIError) as exc:
            return TargetOutput(latency_ms=(time.perf_counter() - started) * 1000, error=f"{exc}")
        latency = (time.perf_counter() - started) * 1000
        body = completion.model_dump()
        citations = [c for c in body.get("citations") or [] if isinstance(c, dict)]
        contexts: list[str] | None = None  # None: not a RAG answer, context metrics do not apply
        if self.record.kind == "router":
            contexts = list(case.reference_contexts)
        elif "citations" in body and all(isinstance(c.get("text"), str) for c in citations):
            contexts = [c["text"] for c in citations]  # a RAG answer (possibly with nothing retrieved)
        usage = completion.usage
        return TargetOutput(
            answer=completion.choices[0].message.content or "" if completion.choices else "",
            contexts=contexts,
            citations=citations,
            request_id=raw.headers.get("x-opsgate-request-id"),
            versions=[v for v in raw.headers.get("x-opsgate-versions", "").split(",") if v],
            latency_ms=latency,
            tokens_in=usage.prompt_tokens if usage else None,
            tokens_out=usage.completion_tokens if usage else None,
        )


def _message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
    return str(exc)


async def fill_costs(outputs: list[TargetOutput], connection: Connection, engine: Engine) -> None:
    """Cost of each call, from the gateway's own accounting (in-process: its log rows as they finish;
    a running gateway: its request log, written in batches, so wait a little for the last rows)."""
    if connection.served:
        for out in outputs:
            row = connection.served.get(out.request_id or "")
            if row is not None:
                out.cost_usd = row.cost_usd
        return
    wanted = {o.request_id for o in outputs if o.request_id}
    found: dict[str, float | None] = {}
    deadline = time.monotonic() + 5
    while wanted - set(found) and time.monotonic() < deadline:
        found.update(await asyncio.to_thread(_costs, engine, wanted - set(found)))
        if wanted - set(found):
            await asyncio.sleep(0.2)
    for out in outputs:
        if out.request_id in found:
            out.cost_usd = found[out.request_id]


def _costs(engine: Engine, ids: set[str]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    id_list = sorted(ids)
    with Session(engine) as s:
        for start in range(0, len(id_list), 500):
            chunk = id_list[start : start + 500]
            for rid, cost in s.execute(
                select(RequestLog.id, RequestLog.cost_usd).where(RequestLog.id.in_(chunk))
            ):
                out[rid] = cost
    return out
