"""Benchmark: online evaluation adds no latency. Request latency with sampling at 0% and at 100%.

Two real `opsgate serve` processes on the same project, differing only in the prompt's
`online_eval.sample_rate` (0.0 and 1.0), driven in alternating rounds so both see the same machine
(before each round the 100% gateway's scoring backlog is drained, so its worker's leftovers do not land
on the other's round). Two loads:

- open loop at a fixed rate (`--rate` requests/s, below saturation): latency from each request's
  scheduled time, so queueing counts; this is the "added latency" question;
- closed loop (N concurrent clients as fast as they go): the gateway saturated, where any extra CPU
  shows as latency; the gateway's CPU per request (from /proc) says what the scoring costs.

Printed: p50/p90/p99 per rate and load, CPU ms per request, and what the 100% gateway scored and dropped.

    .venv/bin/python bench/eval_online_latency.py [--requests 1500] [--rate 40] [--concurrency 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
OPSGATE = str(Path(sys.executable).parent / "opsgate")
PROMPT = """\
name: qa
router: default
online_eval:
  sample_rate: {rate}
  metrics: [tokens_out, latency_ms, cost_usd]
  window: 100
messages:
  - role: system
    content: |
      [c1] Berlin is the capital of Germany. [c2] The Rhine flows through Germany and the Netherlands.
      [c3] Paris is the capital of France. [c4] The Seine flows through Paris.
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Gateway:
    def __init__(self, root: Path, rate: float) -> None:
        self.rate = rate
        self.project = root / f"project-{rate}"
        shutil.copytree(REPO / "config", self.project / "config")
        for index in (self.project / "config" / "indexes").glob("*.yaml"):
            index.unlink()
        (self.project / "prompts").mkdir(parents=True)
        (self.project / "prompts" / "qa.yaml").write_text(PROMPT.format(rate=rate), encoding="utf-8")
        self.data = root / f"data-{rate}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPSGATE_")}
        # not a git repository: the first start registers the working tree on the operator's say-so
        env.update(
            OPSGATE_PROJECT_DIR=str(self.project),
            OPSGATE_DATA_DIR=str(self.data),
            OPSGATE_BOOTSTRAP_WORKING_TREE="true",
        )
        self.log = open(root / f"serve-{rate}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [OPSGATE, "serve", "--port", str(self.port)],
            cwd=self.project,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        self.key = (self.data / "admin.key").read_text().strip()

    def metric(self, name: str) -> float:
        for line in httpx.get(
            self.url + "/metrics", headers={"Authorization": f"Bearer {self.key}"}, timeout=5
        ).text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def drain(self) -> None:
        deadline = time.monotonic() + 60
        while self.metric("opsgate_online_eval_backlog") > 0 and time.monotonic() < deadline:
            time.sleep(0.05)

    def cpu_s(self) -> float:
        """User + system CPU seconds of the gateway process so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


async def load(gw: Gateway, requests: int, concurrency: int) -> list[float]:
    latencies: list[float] = []
    body = {"model": "qa", "messages": [{"role": "user", "content": "What is the capital of Germany?"}]}
    headers = {"Authorization": f"Bearer {gw.key}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=gw.url, headers=headers, limits=limits, timeout=30) as client:
        remaining = requests

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                resp = await client.post("/v1/chat/completions", json=body)
                latencies.append((time.perf_counter() - started) * 1000)
                assert resp.status_code == 200, resp.text

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def paced(gw: Gateway, requests: int, rate: float) -> list[float]:
    """Open loop: request i is sent at start + i / rate, whatever the earlier ones are doing."""
    latencies: list[float] = []
    body = {"model": "qa", "messages": [{"role": "user", "content": "What is the capital of Germany?"}]}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(
        base_url=gw.url, headers={"Authorization": f"Bearer {gw.key}"}, limits=limits, timeout=30
    ) as client:
        start = time.perf_counter()

        async def one(i: int) -> None:
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            resp = await client.post("/v1/chat/completions", json=body)
            latencies.append((time.perf_counter() - due) * 1000)
            assert resp.status_code == 200, resp.text

        await asyncio.gather(*(one(i) for i in range(requests)))
    return latencies


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]  # nearest rank


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1500, help="per gateway per round")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=40.0, help="open-loop requests per second")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="opsgate-bench-online-") as tmp:
        gateways = [Gateway(Path(tmp), 0.0), Gateway(Path(tmp), 1.0)]
        try:
            for gw in gateways:
                asyncio.run(load(gw, 200, args.concurrency))  # warm-up
            gateways[1].drain()
            for load_name in ("open", "closed"):
                results: dict[float, list[float]] = {0.0: [], 1.0: []}
                cpu: dict[float, float] = {0.0: 0.0, 1.0: 0.0}
                for _ in range(args.rounds):
                    for gw in gateways:
                        gateways[1].drain()
                        before = gw.cpu_s()
                        if load_name == "open":
                            results[gw.rate] += asyncio.run(paced(gw, args.requests, args.rate))
                        else:
                            results[gw.rate] += asyncio.run(load(gw, args.requests, args.concurrency))
                        gateways[1].drain()  # the scoring of this round's answers is part of its cost
                        cpu[gw.rate] += gw.cpu_s() - before
                how = (
                    f"open loop at {args.rate:g} req/s"
                    if load_name == "open"
                    else f"closed loop, {args.concurrency} clients"
                )
                for rate, values in results.items():
                    print(
                        f"{how}, sampling {rate:.0%}: {len(values)} requests: p50 {pct(values, 50):.2f} ms, "
                        f"p90 {pct(values, 90):.2f} ms, p99 {pct(values, 99):.2f} ms, mean {statistics.fmean(values):.2f} ms; "
                        f"gateway CPU {cpu[rate] / len(values) * 1000:.2f} ms/request"
                    )
            sampled = gateways[1].metric('opsgate_online_eval_total{outcome="sampled"}')
            scored = gateways[1].metric('opsgate_online_eval_total{outcome="scored"}')
            dropped = gateways[1].metric('opsgate_online_eval_total{outcome="dropped"}')
            print(
                f"100% gateway: sampled {sampled:.0f}, scored {scored:.0f}, dropped {dropped:.0f} (queue full)"
            )
        finally:
            for gw in gateways:
                gw.stop()


if __name__ == "__main__":
    main()
