"""Gateway CPU per request with OpenTelemetry tracing off and on (several settings), in the same run.

Starts the fake OpenAI-compatible upstream (tests/fakes/upstream.py), a local OTLP/HTTP sink
(bench/otlp_sink.py) and one `opsgate serve` per setting below, all on one project (a router to the
fake upstream; the repo's policies: an application key's requests pass the `pii` and `injection`
checks). It sends, in alternating rounds, plain and streaming chat completions with an application key
and reads the gateway's CPU (user + system, /proc) around each batch. Exported spans cost CPU after the
requests (the batch processor's thread), so each reading is taken once the gateway has been idle for
`--settle` seconds, and the gateway's idle CPU over that time (background loops), measured before the
rounds, is subtracted.

    .venv/bin/python bench/tracing_cost.py [--requests 300] [--rounds 3] [--concurrency 8]
        [--settings off,request,stages,checks,ratio]
    .venv/bin/python bench/tracing_cost.py --micro    # the spans of one request, in process

On a shared machine the gateway's CPU per request moves by more than tracing costs; `--micro` measures
the tracing work alone, without a server: the spans of one traced request (the request span and its eight
children at detail `stages`, with their attributes) made and encoded for export, opsgate's spans against
the OpenTelemetry SDK's tracer and encoder doing the same.

Settings: off (no OTEL endpoint), request / stages / checks (`OPSGATE_TRACE_DETAIL`, every request
sampled), ratio (the default detail, `OTEL_TRACES_SAMPLER=parentbased_traceidratio`, arg 0.1).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.offline import apply_offline_env

apply_offline_env()

from tests.fakes.gateway import (  # noqa: E402
    FAST_GATEWAY_YAML,
    GatewayProcess,
    build_project,
    deployment,
    free_port,
)
from tests.fakes.upstream import FakeUpstream  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
SETTINGS: dict[str, dict[str, str]] = {
    "off": {},
    "request": {"OPSGATE_TRACE_DETAIL": "request"},
    "stages": {"OPSGATE_TRACE_DETAIL": "stages"},
    "checks": {"OPSGATE_TRACE_DETAIL": "checks"},
    "ratio": {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
}
MESSAGES = [{"role": "user", "content": "Say hello to Ada in five words."}]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


async def batch(gw: GatewayProcess, key: str, stream: bool, count: int, concurrency: int) -> None:
    body: dict[str, Any] = {"model": "fake", "messages": MESSAGES, "stream": stream}
    headers = {"Authorization": f"Bearer {key}"}
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=gw.root_url, trust_env=False, timeout=60) as http:

        async def one() -> None:
            async with sem, http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
                assert r.status_code == 200, await r.aread()
                async for _ in r.aiter_bytes():
                    pass

        await asyncio.gather(*(one() for _ in range(count)))


def settled_cpu(pid: int, settle: float) -> float:
    time.sleep(settle)
    return cpu_seconds(pid)


def micro(requests: int = 5000) -> None:
    """CPU per traced request of making and encoding its spans: opsgate's spans, then the SDK's."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.trace import SpanKind

    from gateway.monitoring import tracing

    stages = ["opsgate.resolve", "opsgate.authorise", "opsgate.policy.authorise", "opsgate.policy.admit"]
    stages += ["opsgate.policy.output", "opsgate.log_write"]
    attempt = {"gen_ai.operation.name": "chat", "gen_ai.system": "openai", "gen_ai.request.model": "fake"}
    done = {"http.response.status_code": 200, "gen_ai.request.model": "fake", "gen_ai.usage.input_tokens": 12}
    done |= {"gen_ai.usage.output_tokens": 7, "opsgate.artifacts": ["router:fake@1#0123456789ab"]}

    exporter = tracing.Exporter("http://127.0.0.1:9/v1/traces", {"OTEL_BSP_SCHEDULE_DELAY": "3600000"})
    ours: list[Any] = []
    started = time.process_time()
    for i in range(requests):
        root = tracing.Span(
            "opsgate /v1/chat/completions",
            None,
            tracing.SERVER,
            {"http.route": "/v1/chat/completions", "opsgate.request_id": str(i)},
        )
        root.trace_id = i + 1
        for name in stages:
            with tracing.Span(name, root):
                pass
        with tracing.Span("chat fake", root, tracing.CLIENT, dict(attempt)) as span:
            span.attributes["gen_ai.response.model"] = "fake-1"
        root.attributes.update(done)
        root.end()
        ours.append(root)
    made = time.process_time() - started
    spans_per_request = len(stages) + 2
    batch = [tracing.Span("x", ours[0]) for _ in range(512 // spans_per_request * spans_per_request)]
    started = time.process_time()
    for _ in range(requests * spans_per_request // len(batch)):
        exporter.encode(batch)
    encoded = time.process_time() - started
    exporter.shutdown()
    print(
        f"opsgate spans: {made / requests * 1e6:6.1f} us to make, {encoded / requests * 1e6:6.1f} us to encode, per request ({spans_per_request} spans)"
    )

    class Keep(SpanExporter):
        def __init__(self) -> None:
            self.spans: list[Any] = []

        def export(self, spans: Any) -> SpanExportResult:
            self.spans.extend(spans)
            return SpanExportResult.SUCCESS

    keep = Keep()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(keep))
    tracer = provider.get_tracer("opsgate")
    from opentelemetry import context, trace

    started = time.process_time()
    for i in range(requests):
        root = tracer.start_span(
            "opsgate /v1/chat/completions",
            kind=SpanKind.SERVER,
            attributes={"http.route": "/v1/chat/completions", "opsgate.request_id": str(i)},
        )
        token = context.attach(trace.set_span_in_context(root))
        for name in stages:
            with tracer.start_as_current_span(name):
                pass
        with tracer.start_as_current_span("chat fake", kind=SpanKind.CLIENT, attributes=attempt) as span:
            span.set_attribute("gen_ai.response.model", "fake-1")
        root.set_attributes(done)
        root.end()
        context.detach(token)
    made = time.process_time() - started
    started = time.process_time()
    for i in range(0, len(keep.spans), 512):
        encode_spans(keep.spans[i : i + 512]).SerializeToString()
    encoded = time.process_time() - started
    print(
        f"SDK spans:     {made / requests * 1e6:6.1f} us to make, {encoded / requests * 1e6:6.1f} us to encode, per request ({spans_per_request} spans)"
    )


def main() -> None:
    if "--micro" in sys.argv:
        micro()
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--settle", type=float, default=0.6)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    args = parser.parse_args()
    chosen = args.settings.split(",")
    upstream = FakeUpstream().start()
    sink_port = free_port()
    sink = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("otlp_sink.py")), str(sink_port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    root = Path(tempfile.mkdtemp(prefix="opsgate-bench-tracing-"))
    routers = {"fake": {"deployments": [deployment("up", upstream.url("ok"))]}}
    project = build_project(root / "project", routers, {"config/gateway.yaml": FAST_GATEWAY_YAML})
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    gateways: dict[str, GatewayProcess] = {}
    keys: dict[str, str] = {}
    idle: dict[str, float] = {}
    cpu: dict[tuple[str, str], list[float]] = {(s, m): [] for s in chosen for m in ("chat", "stream")}
    try:
        for name in chosen:
            env = {**otel, **SETTINGS[name]} if name != "off" else {}
            gw = gateways[name] = GatewayProcess(project, data_dir=root / f"data-{name}", env=env).start()
            keys[name] = gw.cli(
                "keys", "create", "--name", "bench", "--role", "app", key=gw.admin_key
            ).stdout.split()[-1]
            gw.wait_for_key(keys[name])
        for name, gw in gateways.items():  # warm-up, then the idle rate
            assert gw.process is not None
            for stream in (False, True):
                asyncio.run(batch(gw, keys[name], stream, 50, args.concurrency))
            before = settled_cpu(gw.process.pid, args.settle)
            idle[name] = (settled_cpu(gw.process.pid, 3.0) - before) / 3.0
        for _ in range(args.rounds):
            for name, gw in gateways.items():
                assert gw.process is not None
                for mode in ("chat", "stream"):
                    before = cpu_seconds(gw.process.pid)
                    started = time.monotonic()
                    asyncio.run(batch(gw, keys[name], mode == "stream", args.requests, args.concurrency))
                    after = settled_cpu(gw.process.pid, args.settle)
                    elapsed = time.monotonic() - started
                    cpu[(name, mode)].append((after - before - idle[name] * elapsed) / args.requests)
    finally:
        for gw in gateways.values():
            gw.stop()
        upstream.stop()
        sink.terminate()
        received = sink.communicate(timeout=10)[0].strip()
    print(
        f"{args.rounds} rounds x {args.requests} requests per setting and mode, concurrency"
        f" {args.concurrency}, app key (pii + injection checks); load average {os.getloadavg()[0]:.1f}"
    )
    print("CPU ms per request: median of the rounds; vs off: median (min..max) of each round's ratio")
    print(f"{'setting':<9} {'chat ms':>8} {'vs off':>20} {'stream ms':>10} {'vs off':>20}   idle ms/s")
    for name in chosen:
        line = f"{name:<9}"
        for mode in ("chat", "stream"):
            rounds = cpu[(name, mode)]
            line += (
                f" {statistics.median(rounds) * 1000:8.3f}"
                if mode == "chat"
                else f" {statistics.median(rounds) * 1000:10.3f}"
            )
            if "off" in chosen:
                ratios = [a / b - 1 for a, b in zip(rounds, cpu[("off", mode)], strict=True)]
                line += f" {statistics.median(ratios):+7.0%} ({min(ratios):+.0%}..{max(ratios):+.0%})".rjust(
                    21
                )
        print(line + f"   {idle[name] * 1000:8.1f}")
    print(received)


if __name__ == "__main__":
    main()
