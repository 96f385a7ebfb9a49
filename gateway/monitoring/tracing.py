"""OpenTelemetry traces of the request flow, with the GenAI semantic conventions (`gen_ai.*`).

Off by default. `setup()` (called once when the app is created) turns them on when the standard
`OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set: spans go in batches to
that OTLP/HTTP endpoint (the SDK's other `OTEL_*` variables apply: service name, headers, batch delay).

When off, every function here returns at once on the module flag `ON`: no span, no context lookup, no
allocation (`span()` hands back one shared do-nothing context manager).

Spans: the request (server; its parent is the caller's `traceparent`), resolve, authorise, retrieve,
render, each policy stage, each upstream attempt (client; `traceparent` goes to the upstream), the
stream, the log write. The request span is kept on the call (`call.trace`) because a stream ends it from
its SSE writer, outside the request's context.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Mapping, MutableMapping
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar
from typing import Any

ON = False
_tracer: Any = None
_provider: Any = None
_NOOP: AbstractContextManager[None] = nullcontext()
# whether the request being served is sampled: its inner spans are skipped at once when it is not (a
# sampler such as parentbased_traceidratio then costs one span per request, not ten)
_RECORDING: ContextVar[bool] = ContextVar("opsgate_trace_recording", default=False)

SYSTEMS = {"openai": "openai", "azure": "az.ai.openai", "anthropic": "anthropic", "local": "opsgate.local"}


def setup(environ: Mapping[str, str] | None = None) -> bool:
    """Turn tracing on when an OTLP endpoint is configured; return whether it is on."""
    global ON, _tracer, _provider
    env = os.environ if environ is None else environ
    if not (env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        return ON
    if ON:
        return True
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from gateway import __version__

    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", "opsgate")})
    _provider = TracerProvider(resource=resource)
    _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _tracer = _provider.get_tracer("opsgate", __version__)
    atexit.register(shutdown)
    ON = True
    return True


def shutdown() -> None:
    """Export what is left (at the end of the process)."""
    if _provider is not None:
        _provider.force_flush(5000)
        _provider.shutdown()


def span(name: str, attributes: Mapping[str, Any] | None = None, *, client: bool = False) -> Any:
    """A span as a child of the current one, for a `with` block; a shared no-op when tracing is off or
    the request is not sampled."""
    if not ON or not _RECORDING.get():
        return _NOOP
    return _span(name, attributes, client)


def _span(name: str, attributes: Mapping[str, Any] | None, client: bool) -> Any:
    from opentelemetry.trace import SpanKind

    kind = SpanKind.CLIENT if client else SpanKind.INTERNAL
    return _tracer.start_as_current_span(name, kind=kind, attributes=attributes)


def start_request(call: Any, headers: Mapping[str, str]) -> Any:
    """Open the request's server span (its parent: the caller's `traceparent`) and make it current.
    Returns the token for `detach` (None when off)."""
    if not ON:
        return None
    from opentelemetry import context, trace
    from opentelemetry.propagate import extract
    from opentelemetry.trace import SpanKind

    parent = extract({"traceparent": headers.get("traceparent", "")} if "traceparent" in headers else {})
    current = _tracer.start_span(
        f"opsgate {call.route}",
        context=parent,
        kind=SpanKind.SERVER,
        attributes={"http.route": call.route, "opsgate.request_id": call.request_id},
    )
    if not current.is_recording():
        current.end()
        return None
    call.trace = current
    return context.attach(trace.set_span_in_context(current)), _RECORDING.set(True)


def detach(token: Any) -> None:
    if token is not None:
        from opentelemetry import context

        context.detach(token[0])
        _RECORDING.reset(token[1])


def child(call: Any, name: str) -> Any:
    """A span under the request's span, started now and ended with `end` (for work that outlives the
    request's context: the stream). None when off."""
    if not ON or call.trace is None:
        return None
    from opentelemetry import trace

    return _tracer.start_span(name, context=trace.set_span_in_context(call.trace))


def end(current: Any, attributes: Mapping[str, Any] | None = None) -> None:
    if current is not None:
        if attributes:
            current.set_attributes(attributes)
        current.end()


def in_request(call: Any, name: str) -> Any:
    """A `with` span under the request's span whatever the current context (the log write)."""
    if not ON or call.trace is None:
        return _NOOP
    from opentelemetry import trace

    return _tracer.start_as_current_span(name, context=trace.set_span_in_context(call.trace))


def end_request(call: Any, row: Any) -> None:
    """Close the request's span with what its log row says."""
    current = call.trace
    if not ON or current is None:
        return
    from opentelemetry.trace import Status, StatusCode

    attributes: dict[str, Any] = {"http.response.status_code": row.status}
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
    current.set_attributes(attributes)
    if row.status >= 500:
        current.set_status(Status(StatusCode.ERROR, row.error_type or ""))
    current.end()
    call.trace = None


def inject(headers: MutableMapping[str, str]) -> None:
    """Add the current span's `traceparent` to an upstream request's headers."""
    if ON and _RECORDING.get():
        from opentelemetry.propagate import inject as _inject

        _inject(headers)


def attempt(deployment: Any, operation: str) -> Any:
    """An upstream attempt's client span, with the GenAI request attributes."""
    if not ON or not _RECORDING.get():
        return _NOOP
    attributes = {
        "gen_ai.operation.name": operation,
        "gen_ai.system": SYSTEMS.get(deployment.provider, deployment.provider),
        "gen_ai.request.model": deployment.model.split("/", 1)[1],
        "opsgate.deployment": deployment.id,
    }
    return _span(f"{operation} {attributes['gen_ai.request.model']}", attributes, True)


def answered(current: Any, value: Any) -> None:
    """The GenAI response attributes of an upstream answer (a JSON body, or a stream's first chunk)."""
    if current is None:
        return
    data = value[0] if isinstance(value, tuple) else value
    if not isinstance(data, dict):
        return
    if isinstance(data.get("model"), str):
        current.set_attribute("gen_ai.response.model", data["model"])
    usage = data.get("usage")
    if isinstance(usage, dict):
        for key, name in (("prompt_tokens", "input_tokens"), ("completion_tokens", "output_tokens")):
            if isinstance(usage.get(key), int):
                current.set_attribute(f"gen_ai.usage.{name}", usage[key])
