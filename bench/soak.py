"""Soak: a real `opsgate serve` under a steady load for a bounded time; does it leak, and is every answered
request logged?

One gateway on a fresh project (the repo's config, no indexes, no classic models, SQLite in a temp data
dir), driven open-loop at `--rate` requests/s for `--minutes` (it stops by itself). The mix is the shapes
callers send: chat (local extractive), streamed chat, embeddings (MiniLM), a prompt with a template, and
errors (unknown models with fresh names, bad token ids), each answered request's id kept.

Printed: the gateway's RSS every `--sample-s`, the growth per minute after the warm-up (least-squares
slope over the samples after `--warmup-s`; target < 1 MB/min), and the request-log rows found for the
answered request ids (target: all of them, exactly one each).

    .venv/bin/python bench/soak.py [--minutes 3] [--rate 40] [--warmup-s 60] [--sample-s 10]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
OPSGATE = str(Path(sys.executable).parent / "opsgate")
PROMPT = """\
name: soak
router: default
variables:
  type: object
  properties:
    n: {type: integer}
messages:
  - role: system
    content: |
      {% for i in range(n) %}[c{{ i }}] Item {{ i }} costs {{ i * 3 }} euros. {% endfor %}
"""
GATEWAY_YAML = "metrics:\n  require_key: true\n"
SYSTEM = "Oslo is the capital of Norway. Bergen is a city on the west coast. The fjords are deep."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Gateway:
    def __init__(self, root: Path) -> None:
        self.project = root / "project"
        shutil.copytree(REPO / "config", self.project / "config", ignore=shutil.ignore_patterns("models"))
        for index in (self.project / "config" / "indexes").glob("*.yaml"):
            index.unlink()
        (self.project / "config" / "gateway.yaml").write_text(GATEWAY_YAML, encoding="utf-8")
        (self.project / "prompts").mkdir(parents=True)
        (self.project / "prompts" / "soak.yaml").write_text(PROMPT, encoding="utf-8")
        self.data = root / "data"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPSGATE_")}
        # not a git repository: the first start registers the working tree on the operator's say-so
        env.update(
            OPSGATE_PROJECT_DIR=str(self.project),
            OPSGATE_DATA_DIR=str(self.data),
            OPSGATE_BOOTSTRAP_WORKING_TREE="true",
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),  # this checkout
        )
        self.log = open(root / "serve.log", "wb")  # noqa: SIM115
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
                pass
            time.sleep(0.1)
        else:
            raise SystemExit(f"the gateway did not get ready; see {root / 'serve.log'}")
        self.key = (self.data / "admin.key").read_text().strip()
        self.process = psutil.Process(self.proc.pid)

    def rss_mb(self) -> float:
        return float(self.process.memory_info().rss) / 1e6

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)
        self.log.close()


def requests() -> itertools.cycle[tuple[str, dict[str, object]]]:
    chat = {
        "model": "default",
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "What is the capital of Norway?"},
        ],
    }
    mix: list[tuple[str, dict[str, object]]] = [
        ("/v1/chat/completions", chat),
        ("/v1/chat/completions", {**chat, "stream": True}),
        ("/v1/embeddings", {"model": "minilm", "input": ["the fjords are deep", "Oslo"]}),
        (
            "/v1/chat/completions",
            {
                "model": "prompt:soak",
                "prompt_variables": {"n": 20},
                "messages": [{"role": "user", "content": "What does item 7 cost?"}],
            },
        ),
        ("/v1/chat/completions", chat),
        ("/v1/chat/completions", {**chat, "model": "NEW"}),  # an unknown name, fresh every time: 404
        ("/v1/embeddings", {"model": "minilm", "input": [[-1]]}),  # 400
        ("/v1/chat/completions", chat),
    ]
    return itertools.cycle(mix)


async def drive(
    gw: Gateway, minutes: float, rate: float, sample_s: float
) -> tuple[list[str], list[tuple[float, float]], dict[int, int]]:
    answered: list[str] = []
    statuses: dict[int, int] = {}
    samples: list[tuple[float, float]] = []
    headers = {"Authorization": f"Bearer {gw.key}"}
    mix = requests()
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=gw.url, headers=headers, timeout=30, limits=limits) as client:
        for path, body in list(itertools.islice(mix, 8)) * 3:  # warm: MiniLM loaded, caches filled
            if body.get("model") != "NEW":
                await client.post(path, json=body)

        async def one(path: str, body: dict[str, object]) -> None:
            if body.get("model") == "NEW":
                body = {**body, "model": "unknown-" + secrets.token_hex(16)}
            try:
                if body.get("stream"):
                    async with client.stream("POST", path, json=body) as r:
                        async for _ in r.aiter_bytes():
                            pass
                else:
                    r = await client.post(path, json=body)
            except httpx.HTTPError:
                statuses[-1] = statuses.get(-1, 0) + 1
                return
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            answered.append(r.headers["x-opsgate-request-id"])

        started = time.monotonic()
        end = started + minutes * 60
        next_sample = started
        tasks: set[asyncio.Task[None]] = set()
        n = 0
        while (now := time.monotonic()) < end:
            if now >= next_sample:
                samples.append((now - started, gw.rss_mb()))
                print(
                    f"  {now - started:6.0f} s  rss {samples[-1][1]:7.1f} MB  answered {len(answered)}",
                    flush=True,
                )
                next_sample += sample_s
            path, body = next(mix)
            task = asyncio.create_task(one(path, body))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
            await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()))
        await asyncio.gather(*tasks)
        samples.append((time.monotonic() - started, gw.rss_mb()))
    return answered, samples, statuses


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float:
    if len(samples) < 2:
        return float("nan")
    xs = [t / 60 for t, _ in samples]
    ys = [m for _, m in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else float("nan")


def log_rows(db: Path, ids: list[str]) -> tuple[int, int]:
    """(distinct answered ids with a row, rows for those ids)."""
    with sqlite3.connect(db) as conn:
        conn.execute("create temp table wanted(id text primary key)")
        conn.executemany("insert or ignore into wanted values (?)", [(i,) for i in ids])
        distinct, rows = conn.execute(
            "select count(distinct r.id), count(*) from request_log r join wanted w on w.id = r.id"
        ).fetchone()
    return int(distinct), int(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--rate", type=float, default=40.0, help="requests per second (open loop)")
    parser.add_argument(
        "--warmup-s", type=float, default=60.0, help="samples before this are not in the slope"
    )
    parser.add_argument("--sample-s", type=float, default=10.0)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="opsgate-soak-"))
    gw = Gateway(root)
    try:
        print(
            f"soak: {args.minutes} min at {args.rate} req/s on {gw.url} (pid {gw.proc.pid}), files in {root}"
        )
        answered, samples, statuses = asyncio.run(drive(gw, args.minutes, args.rate, args.sample_s))
        time.sleep(2)  # the last log rows are flushed (0.2 s interval by default)
        distinct, rows = log_rows(gw.data / "opsgate.db", answered)
        steady = [s for s in samples if s[0] >= args.warmup_s]
        per_min = slope_mb_per_min(steady)
        print(f"answered {len(answered)} requests; statuses {dict(sorted(statuses.items()))}")
        print(f"rss {samples[0][1]:.1f} MB at start, {samples[-1][1]:.1f} MB at the end")
        print(f"rss growth after {args.warmup_s:.0f} s of warm-up: {per_min:+.2f} MB/min (target < 1 MB/min)")
        print(f"log rows: {distinct} of {len(answered)} answered ids have a row; {rows} rows for them")
        with sqlite3.connect(gw.data / "opsgate.db") as conn:
            for row in conn.execute(
                "select route, model, status, error_type, error_message from request_log where status >= 500"
            ):
                print("  5xx:", row)
    finally:
        gw.stop()
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
