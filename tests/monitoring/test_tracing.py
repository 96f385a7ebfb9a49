"""OpenTelemetry traces: a real gateway exports OTLP/HTTP to a receiver on loopback (protobuf decoded with
opentelemetry-proto), the caller's `traceparent` is the request span's parent, and each upstream attempt's
`traceparent` reaches the fake upstream."""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.fakes.gateway import GatewayProcess, deployment
from tests.fakes.upstream import FakeUpstream

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
HELLO = """name: hello
router: traced
messages:
  - role: system
    content: "Greet {{ who }}."
"""


class Receiver:
    """An OTLP/HTTP trace receiver: POST /v1/traces, protobuf body; keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.paths: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    raw = gzip.decompress(raw)
                receiver.paths.append(self.path)
                request = ExportTraceServiceRequest()
                request.ParseFromString(raw)
                for resource in request.resource_spans:
                    for scope in resource.scope_spans:
                        receiver.spans.extend(scope.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, count: int, name: str, timeout: float = 15) -> list[Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [s for s in self.spans if s.name == name]
            if len(found) >= count:
                return found
            time.sleep(0.1)
        raise AssertionError(f"{name!r}: {len(found)} span(s), wanted {count}; got {names(self.spans)}")


def names(spans: list[Any]) -> list[str]:
    return sorted(s.name for s in spans)


def attrs(span: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        value = kv.value
        field = value.WhichOneof("value")
        out[kv.key] = (
            [v.string_value for v in value.array_value.values]
            if field == "array_value"
            else getattr(value, field)
        )
    return out


@pytest.fixture(scope="module")
def traced(
    project_factory: Any, gateway_factory: Any, fake_upstream: FakeUpstream
) -> Iterator[tuple[GatewayProcess, Receiver]]:
    receiver = Receiver()
    routers = {
        "traced": {
            "deployments": [
                deployment("bad", fake_upstream.url("500-traced")),
                deployment("good", fake_upstream.url("ok-traced")),
            ]
        }
    }
    project = project_factory(routers=routers, files={"prompts/hello.yaml": HELLO})
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    with gateway_factory(project, env=env) as gw:
        yield gw, receiver
    receiver.server.shutdown()


def tree(receiver: Receiver, trace_id: bytes) -> dict[str, list[Any]]:
    by_name: dict[str, list[Any]] = {}
    for s in receiver.spans:
        if s.trace_id == trace_id:
            by_name.setdefault(s.name, []).append(s)
    return by_name


def test_request_trace_with_genai_attributes_and_propagation(
    traced: tuple[GatewayProcess, Receiver], fake_upstream: FakeUpstream
) -> None:
    gw, receiver = traced
    fake_upstream.clear()
    with gw.http() as http:
        resp = http.post(
            "/v1/chat/completions",
            json={
                "model": "hello",
                "messages": [{"role": "user", "content": "hi"}],
                "prompt_variables": {"who": "x"},
            },
            headers={**gw.auth(), "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"},
        )
    assert resp.status_code == 200, resp.text
    receiver.wait(1, "opsgate.log_write")
    spans = tree(receiver, bytes.fromhex(CALLER_TRACE))
    (request,) = spans["opsgate /v1/chat/completions"]
    assert request.parent_span_id == bytes.fromhex(CALLER_SPAN)  # the caller's span is the parent
    assert request.kind == request.SPAN_KIND_SERVER
    for name in ("opsgate.resolve", "opsgate.authorise", "opsgate.render", "opsgate.log_write"):
        assert spans[name][0].parent_span_id == request.span_id, name
    (policy_authorise,) = spans["opsgate.policy.authorise"]
    assert policy_authorise.parent_span_id == spans["opsgate.authorise"][0].span_id
    assert "opsgate.policy.admit" in spans and "opsgate.policy.output" in spans

    attempts = sorted(spans["chat fake"], key=lambda s: s.start_time_unix_nano)
    assert len(attempts) == 2  # `bad` answered 500, then `good`
    assert all(a.kind == a.SPAN_KIND_CLIENT and a.parent_span_id == request.span_id for a in attempts)
    first, second = (attrs(a) for a in attempts)
    assert (
        first["opsgate.deployment"] == "bad"
        and attempts[0].status.code == attempts[0].status.STATUS_CODE_ERROR
    )
    assert second["gen_ai.operation.name"] == "chat"
    assert second["gen_ai.system"] == "openai"
    assert second["gen_ai.request.model"] == "fake"
    assert second["gen_ai.response.model"]
    assert second["gen_ai.usage.input_tokens"] > 0 and second["gen_ai.usage.output_tokens"] > 0
    top = attrs(request)
    assert top["gen_ai.request.model"] == "hello" and top["http.response.status_code"] == 200
    assert top["gen_ai.usage.output_tokens"] == second["gen_ai.usage.output_tokens"]
    assert any(a.startswith("prompt:hello@") for a in top["opsgate.artifacts"])

    # each attempt's own span id went upstream as its traceparent
    sent = [h["headers"].get("traceparent") for h in fake_upstream.hits() if "traced" in h["mode"]]
    expected = [f"00-{CALLER_TRACE}-{a.span_id.hex()}-01" for a in attempts]
    assert sent == expected


def test_stream_span_and_new_trace_without_traceparent(
    traced: tuple[GatewayProcess, Receiver], fake_upstream: FakeUpstream
) -> None:
    gw, receiver = traced
    before = len(receiver.wait(0, "opsgate.stream"))
    chunks = list(
        gw.client().chat.completions.create(
            model="traced", messages=[{"role": "user", "content": "one two three"}], stream=True
        )
    )
    assert chunks
    (stream,) = receiver.wait(before + 1, "opsgate.stream")[before:]
    spans = tree(receiver, stream.trace_id)
    (request,) = spans["opsgate /v1/chat/completions"]
    assert request.parent_span_id == b""  # no caller context: a new trace
    assert stream.parent_span_id == request.span_id
    assert attrs(stream)["gen_ai.usage.output_tokens"] > 0
    assert spans["chat fake"]  # `bad` may be cooling down after the first test: one attempt or two


def test_off_without_endpoint_costs_no_span_objects() -> None:
    from gateway.monitoring import tracing

    assert tracing.setup({}) is False and not tracing.ON
    call = type("C", (), {"trace": None, "route": "/v1/chat/completions", "request_id": "r"})()
    assert tracing.start_request(call, {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}) is None
    assert tracing.span("x") is tracing.span("y")  # one shared no-op, nothing created per call
    assert tracing.child(call, "opsgate.stream") is None and call.trace is None
    headers: dict[str, str] = {}
    tracing.inject(headers)
    assert headers == {}


@pytest.fixture(scope="module")
def detailed(
    project_factory: Any, gateway_factory: Any, fake_upstream: FakeUpstream
) -> Iterator[tuple[GatewayProcess, Receiver, str]]:
    """Every policy check traced (`OPSGATE_TRACE_DETAIL=checks`), and a sampler that samples nothing of
    its own (ratio 0) but follows a caller's sampled `traceparent`."""
    receiver = Receiver()
    routers = {"plain": {"deployments": [deployment("up", fake_upstream.url("ok-detail"))]}}
    project = project_factory(routers=routers)
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OPSGATE_TRACE_DETAIL": "checks",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0",
    }
    with gateway_factory(project, env=env) as gw:
        app_key = gw.cli("keys", "create", "--name", "app", "--role", "app", key=gw.admin_key).stdout.split()[
            -1
        ]
        gw.wait_for_key(app_key)
        yield gw, receiver, app_key
    receiver.server.shutdown()


def test_each_policy_check_is_a_span_under_its_stage(detailed: tuple[GatewayProcess, Receiver, str]) -> None:
    gw, receiver, app_key = detailed
    trace = "5bf92f3577b34da6a3ce929d0e0e4736"
    body = {"model": "plain", "messages": [{"role": "user", "content": "mail me at ada@example.com"}]}
    with gw.http() as http:
        resp = http.post(
            "/v1/chat/completions",
            json=body,
            headers={**gw.auth(app_key), "traceparent": f"00-{trace}-{CALLER_SPAN}-01"},
        )
    assert resp.status_code == 200, resp.text
    receiver.wait(1, "opsgate.log_write")
    spans = tree(receiver, bytes.fromhex(trace))
    (admit,) = spans["opsgate.policy.admit"]
    (output,) = spans["opsgate.policy.output"]
    # the repo's policy gives app keys `pii` (redact) and `injection` (flag): each check on the way in
    # is a span under admit, each on the way out one under output
    checks = {s.name: s for s in spans["opsgate.check pii"] + spans["opsgate.check injection"]}
    assert len(spans["opsgate.check pii"]) == 2 and len(spans["opsgate.check injection"]) == 2
    inbound = [s for s in spans["opsgate.check pii"] if s.parent_span_id == admit.span_id]
    assert len(inbound) == 1 and attrs(inbound[0])["opsgate.policy.verdict"] == "redacted"
    assert attrs(inbound[0])["opsgate.policy.rule"] == "apps"
    assert admit.start_time_unix_nano <= inbound[0].start_time_unix_nano
    assert inbound[0].end_time_unix_nano <= admit.end_time_unix_nano
    assert any(s.parent_span_id == output.span_id for s in checks.values())


def test_sampler_ratio_zero_traces_only_sampled_callers(
    detailed: tuple[GatewayProcess, Receiver, str],
) -> None:
    gw, receiver, app_key = detailed
    before = len(receiver.spans)
    writes = len(receiver.wait(0, "opsgate.log_write"))
    unsampled = "6bf92f3577b34da6a3ce929d0e0e4736"
    body = {"model": "plain", "messages": [{"role": "user", "content": "hi"}]}
    with gw.http() as http:
        for headers in ({}, {"traceparent": f"00-{unsampled}-{CALLER_SPAN}-00"}):
            assert http.post(
                "/v1/chat/completions", json=body, headers={**gw.auth(app_key), **headers}
            ).is_success
        sampled = "7bf92f3577b34da6a3ce929d0e0e4736"
        traced = http.post(
            "/v1/chat/completions",
            json=body,
            headers={**gw.auth(app_key), "traceparent": f"00-{sampled}-{CALLER_SPAN}-01"},
        )
    assert traced.is_success
    receiver.wait(writes + 1, "opsgate.log_write")  # the sampled request's spans arrived
    time.sleep(0.3)
    new = receiver.spans[before:]
    assert {s.trace_id.hex() for s in new} == {sampled}, names(new)


def test_traceparent_parsing_and_ratio_sampler() -> None:
    from gateway.monitoring.tracing import Sampler, _parse_traceparent

    good = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
    assert _parse_traceparent(good) == (int(CALLER_TRACE, 16), int(CALLER_SPAN, 16), True)
    for bad in (None, "", "00-xyz", f"00-{'0' * 32}-{CALLER_SPAN}-01", f"ff-{CALLER_TRACE}-{CALLER_SPAN}-01",
                f"00-{CALLER_TRACE}-{'0' * 16}-01", f"00-{CALLER_TRACE[:-1]}g-{CALLER_SPAN}-01"):  # fmt: skip
        assert _parse_traceparent(bad) is None, bad
    half = Sampler.from_env({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.5"})
    assert half.sampled(0x0, None) and not half.sampled(0xFFFFFFFFFFFFFFFF, None)
    share = sum(half.sampled(i * 0x0123456789ABCDEF % (1 << 64), None) for i in range(1, 2001)) / 2000
    assert 0.4 < share < 0.6
    assert half.sampled(0x0, (1, 2, False))  # not parent-based: the ratio decides, whatever the caller says
    parent_based = Sampler.from_env({"OTEL_TRACES_SAMPLER": "parentbased_always_off"})
    assert parent_based.sampled(5, (5, 6, True)) and not parent_based.sampled(5, None)


def test_a_collector_that_is_down_drops_spans_quietly() -> None:
    from gateway.monitoring.tracing import Exporter, Span
    from tests.fakes.gateway import free_port

    exporter = Exporter(f"http://127.0.0.1:{free_port()}/v1/traces", {"OTEL_BSP_SCHEDULE_DELAY": "60000"})
    try:
        done = Span("x", None)
        done.trace_id = 1
        exporter.queue(done)
        exporter.flush()  # refused: logged, dropped, no exception
        assert not exporter.spans and exporter.exported == 1
    finally:
        exporter.shutdown()
