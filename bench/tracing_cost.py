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

Settings: off (no OTEL endpoint), request / stages / checks (`OPSGATE_TRACE_DETAIL`, every request
sampled), ratio (the default detail, `OTEL_TRACES_SAMPLER=parentbased_traceidratio`, arg 0.1).
"""

from __future__ import annotations

import argparse
import asyncio
import os
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


def main() -> None:
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
    cpu = {(s, m): 0.0 for s in chosen for m in ("chat", "stream")}
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
                    cpu[(name, mode)] += after - before - idle[name] * elapsed
    finally:
        for gw in gateways.values():
            gw.stop()
        upstream.stop()
        sink.terminate()
        received = sink.communicate(timeout=10)[0].strip()
    done = args.rounds * args.requests
    print(
        f"{args.rounds} rounds x {args.requests} requests per setting and mode, concurrency"
        f" {args.concurrency}, app key (pii + injection checks); load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'setting':<9} {'chat ms':>8} {'vs off':>7} {'stream ms':>10} {'vs off':>7}   idle ms/s")
    for name in chosen:
        chat, stream = cpu[(name, "chat")] / done * 1000, cpu[(name, "stream")] / done * 1000
        line = f"{name:<9} {chat:8.3f}"
        if "off" in chosen:
            line += f" {chat / (cpu[('off', 'chat')] / done * 1000) - 1:+7.0%}"
        line += f" {stream:10.3f}"
        if "off" in chosen:
            line += f" {stream / (cpu[('off', 'stream')] / done * 1000) - 1:+7.0%}"
        print(line + f"   {idle[name] * 1000:8.1f}")
    print(received)


if __name__ == "__main__":
    main()
