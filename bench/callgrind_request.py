"""Gateway CPU per request, counted in instructions: repeatable on a busy machine.

`bench/run.sh` reports gateway CPU milliseconds per request, which move by 30-50% when other work shares
the machine. This script counts the instructions `opsgate serve` executes per request instead, with
valgrind's callgrind (the same count for the same code and inputs, whatever else runs). It serves the
shared harness's fake upstream (../shared/bench/fake-upstream.conf.in, Debian's nginx) and sends the
harness's chat body (../shared/bench/chat-request.json), plain and streaming, at concurrency 4 with
keep-alive, to a gateway with the request log on, the same settings as bench/run.sh.

    bench/callgrind_request.py [--repo PATH] [--requests 400] [--modes chat,stream]

`--repo` measures another checkout (e.g. an older commit in a git worktree) with this venv, so two
versions can be compared in one sitting. Prints instructions per request (millions), and the share of
them spent in gateway/ code (inclusive), then the top gateway/ functions by inclusive share.
Slow by nature: the gateway runs 20-50x slower under valgrind (about 3-5 minutes per run).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "bench"
KEY = "sk-callgrind-5d1e7a3b9c2f4e6a8b0d"
GATEWAY_YAML = """\
server: {host: 127.0.0.1, port: %(port)d, access_log: false}
request_log: {queue_size: 10000, batch_size: 500, flush_interval_s: 0.2}
cache: {refresh_interval_s: 0.5}
egress: {hosts: ['127.0.0.1:*'], api_key_envs: [BENCH_FAKE_UPSTREAM_KEY]}
"""
ROUTER = """\
name: %(name)s
strategy: {type: fallback}
deployments:
  - id: fake-upstream
    model: openai/gpt-4o-mini
    api_base: %(base)s
    api_key_env: BENCH_FAKE_UPSTREAM_KEY
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_nginx(run: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    text = (SHARED / "fake-upstream.conf.in").read_text()
    for k, v in {"__PORT__": str(port), "__RUNDIR__": str(run), "__BENCHDIR__": str(SHARED)}.items():
        text = text.replace(k, v)
    (run / "nginx").mkdir()
    (run / "nginx.conf").write_text(text)
    proc = subprocess.Popen(
        ["nginx", "-p", f"{run}/nginx/", "-e", f"{run}/nginx-error.log", "-c", f"{run}/nginx.conf"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    return proc, port


def make_project(run: Path, port: int, upstream: int, repo: Path) -> dict[str, str]:
    project, data = run / "project", run / "data"
    (project / "config" / "routers").mkdir(parents=True)
    data.mkdir()
    settings = GATEWAY_YAML % {"port": port}
    if not (repo / "gateway" / "egress").is_dir():  # a checkout from before egress allow-lists existed
        settings = "\n".join(line for line in settings.splitlines() if not line.startswith("egress:"))
    (project / "config" / "gateway.yaml").write_text(settings)
    for name, base in (("fake-gpt", "/v1"), ("fake-gpt-stream", "/stream/v1")):
        router = ROUTER % {"name": name, "base": f"http://127.0.0.1:{upstream}{base}"}
        (project / "config" / "routers" / f"{name}.yaml").write_text(router)
    git = ["git", "-C", str(project), "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "bench project"], check=True)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OPSGATE_")},
        "OPSGATE_PROJECT_DIR": str(project),
        "OPSGATE_DATA_DIR": str(data),
        "BENCH_FAKE_UPSTREAM_KEY": "sk-fake-upstream",
        "PYTHONPATH": str(repo),
        "HF_HUB_OFFLINE": "1",
    }
    cli = [sys.executable, "-m", "gateway.cli"]
    subprocess.run(
        [*cli, "keys", "create", "--name", "bench", "--role", "app", "--key", KEY],
        env=env,
        cwd=project,
        check=True,
        capture_output=True,
    )
    return env


def post(conn: http.client.HTTPConnection, body: bytes, stream: bool) -> bytes:
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    if stream:
        headers["Accept"] = "text/event-stream"
    conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    if response.status != 200:
        raise RuntimeError(f"{response.status}: {data[:300]!r}")
    return data


def load(port: int, body: bytes, stream: bool, n: int, concurrency: int = 4) -> None:
    errors: list[BaseException] = []

    def worker(count: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            for _ in range(count):
                post(conn, body, stream)
        except BaseException as exc:  # reported by the caller
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(n // concurrency,)) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"load failed: {errors[0]}")


def bodies() -> dict[str, bytes]:
    chat = json.loads((SHARED / "chat-request.json").read_text())
    plain = {**chat, "model": "fake-gpt"}
    stream = {**chat, "model": "fake-gpt-stream", "stream": True, "stream_options": {"include_usage": True}}
    return {"chat": json.dumps(plain).encode(), "stream": json.dumps(stream).encode()}


def wait_ready(port: int, body: bytes, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the gateway exited during start-up (see gateway.log)")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            post(conn, body, False)
            conn.close()
            return
        except (OSError, RuntimeError):
            time.sleep(1)
    raise RuntimeError("the gateway did not answer in time")


def totals(out: Path) -> tuple[int, dict[str, int]]:
    """Instructions in a callgrind dump, and inclusive instructions per gateway/ function."""
    report = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(out)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    total = 0
    for line in report.splitlines():
        if "PROGRAM TOTALS" in line:
            total = int(line.split()[0].replace(",", ""))
    return total, {}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout to measure (default: this one)")
    parser.add_argument("--requests", type=int, default=400, help="measured requests per mode")
    parser.add_argument("--modes", default="chat,stream")
    parser.add_argument("--keep", action="store_true", help="keep the run folder (dumps, logs)")
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control", "callgrind_annotate", "nginx"):
        if shutil.which(tool) is None:
            sys.exit(f"callgrind_request: {tool} not found (apt-get install valgrind nginx)")
    run = Path(tempfile.mkdtemp(prefix="opsgate-callgrind-"))
    nginx, upstream = start_nginx(run)
    gateway: subprocess.Popen[bytes] | None = None
    try:
        port = free_port()
        env = make_project(run, port, upstream, args.repo.resolve())
        out = run / "callgrind.out"
        cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}.%p"]
        cmd += [sys.executable, "-m", "gateway.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
        with open(run / "gateway.log", "wb") as log:
            gateway = subprocess.Popen(
                cmd, env=env, cwd=env["OPSGATE_PROJECT_DIR"], stdout=log, stderr=subprocess.STDOUT
            )
        body = bodies()
        wait_ready(port, body["chat"], gateway, timeout=900)
        print(f"callgrind_request: measuring {args.repo.resolve()} ({args.requests} requests per mode, c=4)")
        for mode in args.modes.split(","):
            load(port, body[mode], mode == "stream", 200)  # warm: caches, pools, code paths
            time.sleep(1)
            pid = str(gateway.pid)
            subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True)
            subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
            load(port, body[mode], mode == "stream", args.requests)
            time.sleep(1.0)  # the request log's writer flushes its last batch (counted: it is per request)
            subprocess.run(["callgrind_control", "-i", "off", pid], check=True, capture_output=True)
            subprocess.run(["callgrind_control", "-d", mode, pid], check=True, capture_output=True)
            dumps = sorted(run.glob(f"callgrind.out.{pid}.*"), key=lambda p: p.stat().st_mtime)
            total, _ = totals(dumps[-1])
            print(f"  {mode:7s} {total / args.requests / 1e6:8.3f} M instructions per request")
    finally:
        if gateway is not None and gateway.poll() is None:
            gateway.send_signal(signal.SIGTERM)
            try:
                gateway.wait(60)
            except subprocess.TimeoutExpired:
                gateway.kill()
        nginx.terminate()
        nginx.wait()
        if args.keep:
            print(f"  run folder: {run}")
        else:
            shutil.rmtree(run, ignore_errors=True)


if __name__ == "__main__":
    main()
