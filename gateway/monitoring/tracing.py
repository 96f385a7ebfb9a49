"""OpenTelemetry traces of the request flow, with the GenAI semantic conventions (`gen_ai.*`).

Off by default. `setup()` (called once when the app is created) turns them on when the standard
`OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set: spans go in batches to
that OTLP/HTTP endpoint as protobuf (`ExportTraceServiceRequest`, the classes of opentelemetry-proto).

When off, every function here returns at once on the module flag `ON`: no span, no context lookup, no
allocation (`span()` hands back one shared do-nothing context manager).

Why not the OpenTelemetry SDK's tracer: on the gateway's hot path its spans cost about 60 us each in the
event loop's thread (sampler, bounded attributes with their lock, context tokens, span processors) and
30 us more in the batch processor's thread (encoding through the SDK's generic encoder, `requests`):
every request traced nearly doubled the gateway's CPU (bench/tracing_cost.py). A span here is a slotted
record (a few us); a thread encodes batches straight into the protobuf classes and posts them on a
kept-alive connection. What the SDK's environment variables say is honoured: `OTEL_SERVICE_NAME`,
`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_[TRACES_]HEADERS`, `_TIMEOUT`, `_COMPRESSION` (gzip),
`OTEL_TRACES_SAMPLER` (always_on, always_off, traceidratio, parentbased_always_on (the default),
parentbased_always_off, parentbased_traceidratio) with `OTEL_TRACES_SAMPLER_ARG`,
`OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`.

Spans, by `OPSGATE_TRACE_DETAIL`:
    request  the request (server; its parent is the caller's `traceparent`), each upstream attempt
             (client; `traceparent` goes to the upstream), the stream
    stages   (the default) and resolve, authorise, retrieve, render, each policy stage, the log write
    checks   and each policy check (`opsgate.check <type>`) under its stage
The request span is kept on the call (`call.trace`) because a stream ends it from its SSE writer,
outside the request's context.
"""

from __future__ import annotations

import atexit
import collections
import contextvars
import gzip
import http.client
import logging
import os
import random
import threading
import time
import urllib.parse
from collections.abc import Mapping, MutableMapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

log = logging.getLogger("opsgate.tracing")

ON = False
REQUEST, STAGES, CHECKS = 0, 1, 2
DETAILS = {"request": REQUEST, "stages": STAGES, "checks": CHECKS}
DETAIL = STAGES
_NOOP: AbstractContextManager[None] = nullcontext()
_CURRENT: contextvars.ContextVar[Span | None] = contextvars.ContextVar("opsgate_span", default=None)
_exporter: Exporter | None = None
_sampler: Sampler | None = None

SYSTEMS = {"openai": "openai", "azure": "az.ai.openai", "anthropic": "anthropic", "local": "opsgate.local"}
INTERNAL, SERVER, CLIENT = 1, 2, 3  # OTLP SpanKind values


class Span:
    """One span: ids, times, attributes. Ended spans go to the exporter's queue."""

    __slots__ = (
        "_token",
        "attributes",
        "end_ns",
        "error",
        "events",
        "kind",
        "name",
        "parent_id",
        "span_id",
        "start",
        "trace_id",
    )
    trace_id: int
    span_id: int
    parent_id: int

    def __init__(
        self, name: str, parent: Span | None, kind: int = INTERNAL, attributes: dict[str, Any] | None = None
    ) -> None:
        self.name = name
        self.kind = kind
        self.trace_id = parent.trace_id if parent is not None else 0
        self.parent_id = parent.span_id if parent is not None else 0
        self.span_id = random.getrandbits(64) or 1
        self.start = time.time_ns()
        self.end_ns = 0
        self.attributes = attributes if attributes is not None else {}
        self.error: str | None = None
        self.events: list[tuple[int, str, dict[str, Any]]] | None = None
        self._token: contextvars.Token[Span | None] | None = None

    def set_attribute(self, key: str, value: Any) -> None:
        self.attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        self.attributes.update(attributes)

    def set_error(self, description: str) -> None:
        self.error = description

    def end(self, end_ns: int | None = None) -> None:
        if self.end_ns == 0:
            self.end_ns = end_ns or time.time_ns()
            if _exporter is not None:
                _exporter.queue(self)

    def __enter__(self) -> Span:
        self._token = _CURRENT.set(self)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _tb: Any) -> None:
        if self._token is not None:
            _CURRENT.reset(self._token)
            self._token = None
        if exc is not None:
            self.error = f"{type(exc).__name__}: {exc}"[:300]
            attributes = {"exception.type": type(exc).__name__, "exception.message": str(exc)[:300]}
            self.events = [(time.time_ns(), "exception", attributes)]
        self.end()


# -- setup ------------------------------------------------------------------------------------------------


def setup(environ: Mapping[str, str] | None = None) -> bool:
    """Turn tracing on when an OTLP endpoint is configured; return whether it is on."""
    global ON, DETAIL, _exporter, _sampler
    env = os.environ if environ is None else environ
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if not endpoint and env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        endpoint = env["OTEL_EXPORTER_OTLP_ENDPOINT"].rstrip("/") + "/v1/traces"
    if not endpoint:
        return ON
    if ON:
        return True
    detail = env.get("OPSGATE_TRACE_DETAIL", "stages").strip().lower()
    if detail not in DETAILS:
        log.warning("OPSGATE_TRACE_DETAIL=%s is not one of %s: using stages", detail, ", ".join(DETAILS))
    DETAIL = DETAILS.get(detail, STAGES)
    _sampler = Sampler.from_env(env)
    _exporter = Exporter(endpoint, env)
    atexit.register(shutdown)
    ON = True
    return True


def shutdown() -> None:
    """Export what is left (at the end of the process)."""
    if _exporter is not None:
        _exporter.shutdown()


# -- the hooks of the request flow -------------------------------------------------------------------------


def span(name: str, attributes: dict[str, Any] | None = None, *, level: int = STAGES) -> Any:
    """A span as a child of the current one, for a `with` block; a shared no-op when tracing is off, the
    request is not sampled, or the detail level leaves it out."""
    if not ON or level > DETAIL:
        return _NOOP
    parent = _CURRENT.get()
    if parent is None:
        return _NOOP
    return Span(name, parent, INTERNAL, attributes)


def check(policy_check: Any, us: float, finding: Any) -> None:
    """A policy check's span (`opsgate.check <type>`), placed after the fact from the pipeline's own
    timing (microseconds; the check has just ended): no context change. Detail `checks` only; under the
    stage span that ran it."""
    if not ON or DETAIL < CHECKS:
        return
    parent = _CURRENT.get()
    if parent is None:
        return
    attributes = {
        "opsgate.policy.check": policy_check.type,
        "opsgate.policy.rule": policy_check.rule,
        "opsgate.policy.verdict": finding.verdict if finding is not None else "none",
    }
    done = Span("opsgate.check " + policy_check.type, parent, INTERNAL, attributes)
    done.start -= int(us * 1000)  # it ended just now (the wall clock, not perf_counter: NTP slews one only)
    done.end()


def start_request(call: Any, headers: Mapping[str, str]) -> Any:
    """Open the request's server span (its parent: the caller's `traceparent`) and make it current.
    Returns the token for `detach` (None when off or not sampled)."""
    if not ON:
        return None
    assert _sampler is not None
    parent = _parse_traceparent(headers.get("traceparent"))
    trace_id = parent[0] if parent else random.getrandbits(128) or 1
    if not _sampler.sampled(trace_id, parent):
        return None
    current = Span(
        f"opsgate {call.route}",
        None,
        SERVER,
        {"http.route": call.route, "opsgate.request_id": call.request_id},
    )
    current.trace_id = trace_id
    current.parent_id = parent[1] if parent else 0
    call.trace = current
    return _CURRENT.set(current)


def detach(token: Any) -> None:
    if token is not None:
        _CURRENT.reset(token)


def child(call: Any, name: str) -> Span | None:
    """A span under the request's span, started now and ended with `end` (for work that outlives the
    request's context: the stream). None when off."""
    if not ON or call.trace is None:
        return None
    return Span(name, call.trace)


def end(current: Span | None, attributes: Mapping[str, Any] | None = None) -> None:
    if current is not None:
        if attributes:
            current.attributes.update(attributes)
        current.end()


def in_request(call: Any, name: str) -> Any:
    """A `with` span under the request's span whatever the current context (the log write)."""
    if not ON or call.trace is None or DETAIL < STAGES:
        return _NOOP
    return Span(name, call.trace)


def end_request(call: Any, row: Any) -> None:
    """Close the request's span with what its log row says."""
    current = call.trace
    if not ON or current is None:
        return
    attributes = current.attributes
    attributes["http.response.status_code"] = row.status
    if row.model:
        attributes["gen_ai.request.model"] = row.model
    if row.upstream_model:
        attributes["gen_ai.response.model"] = row.upstream_model
    if row.tokens_in is not None:
        attributes["gen_ai.usage.input_tokens"] = row.tokens_in
    if row.tokens_out is not None:
        attributes["gen_ai.usage.output_tokens"] = row.tokens_out
    if row.artifacts:
        attributes["opsgate.artifacts"] = list(row.artifacts)
    if row.error_type:
        attributes["error.type"] = row.error_type
    if row.status >= 500:
        current.error = row.error_type or ""
    current.end()
    call.trace = None


def inject(headers: MutableMapping[str, str]) -> None:
    """Add the current span's `traceparent` to an upstream request's headers."""
    if ON:
        current = _CURRENT.get()
        if current is not None:
            headers["traceparent"] = f"00-{current.trace_id:032x}-{current.span_id:016x}-01"


def attempt(deployment: Any, operation: str) -> Any:
    """An upstream attempt's client span, with the GenAI request attributes."""
    if not ON:
        return _NOOP
    parent = _CURRENT.get()
    if parent is None:
        return _NOOP
    model = deployment.model.split("/", 1)[1]
    attributes = {
        "gen_ai.operation.name": operation,
        "gen_ai.system": SYSTEMS.get(deployment.provider, deployment.provider),
        "gen_ai.request.model": model,
        "opsgate.deployment": deployment.id,
    }
    return Span(f"{operation} {model}", parent, CLIENT, attributes)


def answered(current: Span | None, value: Any) -> None:
    """The GenAI response attributes of an upstream answer (a JSON body, or a stream's first chunk)."""
    if current is None:
        return
    data = value[0] if isinstance(value, tuple) else value
    if not isinstance(data, dict):
        return
    if isinstance(data.get("model"), str):
        current.attributes["gen_ai.response.model"] = data["model"]
    usage = data.get("usage")
    if isinstance(usage, dict):
        for key, name in (("prompt_tokens", "input_tokens"), ("completion_tokens", "output_tokens")):
            if isinstance(usage.get(key), int):
                current.attributes[f"gen_ai.usage.{name}"] = usage[key]


def _parse_traceparent(value: str | None) -> tuple[int, int, bool] | None:
    """(trace id, parent span id, sampled) of a W3C `traceparent`, or None when absent or invalid."""
    if not value or len(value) < 55:
        return None
    parts = value.strip().split("-")
    if len(parts) < 4 or len(parts[1]) != 32 or len(parts[2]) != 16 or len(parts[3]) != 2 or parts[0] == "ff":
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return None
    if trace_id == 0 or span_id == 0:
        return None
    return trace_id, span_id, bool(flags & 1)


class Sampler:
    """The SDK's samplers by their `OTEL_TRACES_SAMPLER` names (head sampling at the request span)."""

    def __init__(self, name: str, ratio: float) -> None:
        self.parent_based = name.startswith("parentbased_")
        self.root = name.removeprefix("parentbased_")
        self.bound = round(max(0.0, min(1.0, ratio)) * (1 << 64))

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Sampler:
        name = env.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
        if name.removeprefix("parentbased_") not in ("always_on", "always_off", "traceidratio"):
            log.warning("OTEL_TRACES_SAMPLER=%s is not supported: using parentbased_always_on", name)
            name = "parentbased_always_on"
        try:
            ratio = float(env.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))
        except ValueError:
            ratio = 1.0
        return cls(name, ratio)

    def sampled(self, trace_id: int, parent: tuple[int, int, bool] | None) -> bool:
        if self.parent_based and parent is not None:
            return parent[2]
        if self.root == "always_on":
            return True
        if self.root == "always_off":
            return False
        return (trace_id & 0xFFFFFFFFFFFFFFFF) < self.bound  # the SDK's TraceIdRatioBased rule


# -- export -------------------------------------------------------------------------------------------------


def _env_ms(env: Mapping[str, str], name: str, default: float) -> float:
    try:
        return float(env.get(name, default))
    except ValueError:
        return default


def _headers(text: str) -> dict[str, str]:
    out = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            out[urllib.parse.unquote(key.strip())] = urllib.parse.unquote(value.strip())
    return out


def _resource(env: Mapping[str, str]) -> dict[str, str]:
    attributes = _headers(env.get("OTEL_RESOURCE_ATTRIBUTES", ""))
    attributes.setdefault("service.name", env.get("OTEL_SERVICE_NAME") or "opsgate")
    attributes.update({"telemetry.sdk.name": "opsgate", "telemetry.sdk.language": "python"})
    return attributes


class Exporter:
    """A thread that posts ended spans in batches (on its schedule, or when a batch is full). A full
    queue drops spans (counted); a collector that is down costs dropped batches and one warning a minute,
    never a failed request."""

    def __init__(self, endpoint: str, env: Mapping[str, str]) -> None:
        self.url = urllib.parse.urlsplit(endpoint)
        signal = "OTEL_EXPORTER_OTLP_TRACES_"
        self.headers = {
            **_headers(env.get("OTEL_EXPORTER_OTLP_HEADERS", "")),
            **_headers(env.get(signal + "HEADERS", "")),
            "Content-Type": "application/x-protobuf",
        }
        compression = env.get(signal + "COMPRESSION", env.get("OTEL_EXPORTER_OTLP_COMPRESSION", ""))
        self.gzip = compression.strip().lower() == "gzip"
        if self.gzip:
            self.headers["Content-Encoding"] = "gzip"
        timeout_ms = _env_ms(env, signal + "TIMEOUT", _env_ms(env, "OTEL_EXPORTER_OTLP_TIMEOUT", 10000))
        self.timeout_s = timeout_ms / 1000
        self.delay_s = _env_ms(env, "OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000
        self.max_queue = int(_env_ms(env, "OTEL_BSP_MAX_QUEUE_SIZE", 2048))
        self.batch = int(_env_ms(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512))
        self.resource = _resource(env)
        self.pb = Protobuf()
        from gateway import __version__

        self.scope = {"name": "opsgate", "version": __version__}
        self.spans: collections.deque[Span] = collections.deque()
        self.dropped = 0
        self.exported = 0
        self._wake = threading.Event()
        self._stop = False
        self._conn: http.client.HTTPConnection | None = None
        self._warned = 0.0
        self._thread = threading.Thread(target=self._run, name="opsgate-trace-export", daemon=True)
        self._thread.start()

    def queue(self, ended: Span) -> None:
        spans = self.spans
        if len(spans) >= self.max_queue:
            self.dropped += 1
            return
        spans.append(ended)  # deque.append is atomic: no lock on the request path
        if len(spans) == self.batch:
            self._wake.set()

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait(self.delay_s)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        while self.spans:
            taken: list[Span] = []
            while self.spans and len(taken) < self.batch:
                taken.append(self.spans.popleft())
            self._post(self.encode(taken))
            self.exported += len(taken)

    def shutdown(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=5)
        self.flush()

    def encode(self, spans: list[Span]) -> bytes:
        pb = self.pb
        pb_spans = []
        for s in spans:
            out = pb.Span(
                trace_id=s.trace_id.to_bytes(16, "big"),
                span_id=s.span_id.to_bytes(8, "big"),
                parent_span_id=s.parent_id.to_bytes(8, "big") if s.parent_id else b"",
                name=s.name,
                kind=s.kind,  # type: ignore[arg-type]
                start_time_unix_nano=s.start,
                end_time_unix_nano=s.end_ns,
                attributes=[pb.key_value(k, v) for k, v in s.attributes.items()],
            )
            if s.error is not None:
                out.status.code = out.status.STATUS_CODE_ERROR
                out.status.message = s.error
            for ts, name, attributes in s.events or ():
                out.events.add(
                    time_unix_nano=ts,
                    name=name,
                    attributes=[pb.key_value(k, v) for k, v in attributes.items()],
                )
            pb_spans.append(out)
        request = pb.Request(
            resource_spans=[
                pb.ResourceSpans(
                    resource={"attributes": [pb.key_value(k, v) for k, v in self.resource.items()]},  # type: ignore[arg-type]
                    scope_spans=[pb.ScopeSpans(scope=self.scope, spans=pb_spans)],  # type: ignore[arg-type]
                )
            ]
        )
        body: bytes = request.SerializeToString()
        return gzip.compress(body, compresslevel=1) if self.gzip else body

    def _post(self, body: bytes) -> None:
        for attempt in range(2):  # a kept-alive connection the collector closed is reopened once
            try:
                conn = self._connection()
                conn.request("POST", self.url.path or "/v1/traces", body, self.headers)
                response = conn.getresponse()
                response.read()
                if response.status >= 300:
                    self._warn(f"the collector answered HTTP {response.status}")
                if response.getheader("connection", "").lower() == "close" or response.version == 10:
                    self._close()
                return
            except (OSError, http.client.HTTPException) as exc:
                self._close()
                if attempt:
                    self._warn(f"{type(exc).__name__}: {exc}")

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            host, port = self.url.hostname or "127.0.0.1", self.url.port
            if self.url.scheme == "https":
                self._conn = http.client.HTTPSConnection(host, port, timeout=self.timeout_s)
            else:
                self._conn = http.client.HTTPConnection(host, port, timeout=self.timeout_s)
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _warn(self, problem: str) -> None:
        now = time.monotonic()
        if now - self._warned >= 60:
            self._warned = now
            log.warning("traces not exported to %s: %s (spans are dropped)", self.url.geturl(), problem)


class Protobuf:
    """The OTLP protobuf classes (opentelemetry-proto), imported when tracing is turned on."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
        from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
        from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans
        from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan

        self.Request, self.ResourceSpans, self.ScopeSpans, self.Span = (
            ExportTraceServiceRequest,
            ResourceSpans,
            ScopeSpans,
            PbSpan,
        )
        self.KeyValue, self.AnyValue, self.ArrayValue = KeyValue, AnyValue, ArrayValue

    def key_value(self, key: str, value: Any) -> Any:
        return self.KeyValue(key=key, value=self.any(value))

    def any(self, value: Any) -> Any:
        if isinstance(value, bool):
            return self.AnyValue(bool_value=value)
        if isinstance(value, int):
            return self.AnyValue(int_value=value)
        if isinstance(value, float):
            return self.AnyValue(double_value=value)
        if isinstance(value, list | tuple):
            return self.AnyValue(array_value=self.ArrayValue(values=[self.any(v) for v in value]))
        return self.AnyValue(string_value=str(value))
