"""CPU per streamed request of the bridged APIs vs chat completions, in the same run.

Starts the fake OpenAI-compatible upstream (tests/fakes/upstream.py, `ok` mode: one chunk per word) and
a real `opsgate serve`, then sends, in alternating rounds, the same 120-word answer as a chat stream
(`/v1/chat/completions`), a Responses stream (`/v1/responses`) and a Messages stream (`/v1/messages`),
reading every byte. The gateway's CPU (user + system, from /proc) is read before and after each batch;
it prints CPU ms per request for each surface and the ratio to chat (target: within 1.5x).

    .venv/bin/python bench/surfaces_stream.py [--requests 60] [--rounds 3] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.offline import apply_offline_env

apply_offline_env()  # tiktoken's files from litellm's package, as in the gateway

from tests.fakes.gateway import FAST_GATEWAY_YAML, GatewayProcess, build_project, deployment  # noqa: E402
from tests.fakes.upstream import FakeUpstream  # noqa: E402

WORDS = " ".join(f"word{i}" for i in range(120))
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def requests_for(surface: str) -> tuple[str, dict[str, Any]]:
    user = [{"role": "user", "content": WORDS}]
    if surface == "chat":
        options = {"include_usage": True}  # as the bridges ask the upstream (their last event has usage)
        return "/v1/chat/completions", {
            "model": "fake",
            "messages": user,
            "stream": True,
            "stream_options": options,
        }
    if surface == "responses":
        return "/v1/responses", {"model": "fake", "input": WORDS, "stream": True, "store": False}
    return "/v1/messages", {"model": "fake", "max_tokens": 512, "messages": user, "stream": True}


async def batch(gw: GatewayProcess, surface: str, count: int, concurrency: int) -> int:
    path, body = requests_for(surface)
    headers = gw.auth()
    sem = asyncio.Semaphore(concurrency)
    received = 0
    async with httpx.AsyncClient(base_url=gw.root_url, trust_env=False, timeout=60) as http:

        async def one() -> None:
            nonlocal received
            async with sem, http.stream("POST", path, json=body, headers=headers) as r:
                assert r.status_code == 200, await r.aread()
                async for chunk in r.aiter_bytes():
                    received += len(chunk)

        await asyncio.gather(*(one() for _ in range(count)))
    return received


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    upstream = FakeUpstream().start()
    root = Path(tempfile.mkdtemp(prefix="opsgate-bench-surfaces-"))
    routers = {"fake": {"deployments": [deployment("up", upstream.url("ok"))]}}
    project = build_project(root / "project", routers, {"config/gateway.yaml": FAST_GATEWAY_YAML})
    surfaces = ["chat", "responses", "messages"]
    cpu = dict.fromkeys(surfaces, 0.0)
    done = dict.fromkeys(surfaces, 0)
    with GatewayProcess(project, data_dir=root / "data").start() as gw:
        assert gw.process is not None
        for surface in surfaces:  # warm-up
            asyncio.run(batch(gw, surface, 8, args.concurrency))
        for _ in range(args.rounds):
            for surface in surfaces:
                before = cpu_seconds(gw.process.pid)
                asyncio.run(batch(gw, surface, args.requests, args.concurrency))
                cpu[surface] += cpu_seconds(gw.process.pid) - before
                done[surface] += args.requests
    upstream.stop()
    print(
        f"{args.rounds} rounds x {args.requests} streamed requests of 120 words, concurrency {args.concurrency}"
    )
    chat = cpu["chat"] / done["chat"]
    for surface in surfaces:
        per = cpu[surface] / done[surface]
        print(f"{surface:<10} {per * 1000:7.2f} ms CPU per request   {per / chat:5.2f}x chat")


if __name__ == "__main__":
    main()
