"""Requests/s of opsgate through nginx with 1 and 2 replicas, on deploy/topology.sh (network namespaces).

    sudo .venv/bin/python bench/scaleout.py [--duration 15] [--connections 16] [--rounds 1] [--keep]

Starts a topology (id 90 unless --topology-id) on a throwaway project (the repo's config and docs, the
docs_qa RAG prompt), then for each round measures with wrk (in the root namespace, through nginx):
  chat   POST /v1/chat/completions, router `default` (the embedded local provider), an `app` key (the
         repo's policies: PII redaction, injection flags), request log on
  rag    the same on prompt docs_qa: lexical retrieval (BM25 in the replica, chunks fetched from chroma)
with 2 replicas (pinned to cores 0 and 1) and with 1 (core 0). Besides requests/s and latency it reports
where the CPU went (replicas, nginx, PostgreSQL, Redis, chroma, wrk, everything else on the machine), so
the figures say what scales and what does not, and checks that every answered request has its log row.
Needs root (ip netns), nginx and wrk (deploy/install-deps.sh --bench).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

REPO = Path(__file__).resolve().parents[1]
TOPOLOGY = REPO / "deploy" / "topology.sh"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SCENARIOS: dict[str, dict[str, Any]] = {
    "chat": {"model": "default", "messages": [{"role": "user", "content": "Say hello to the replicas."}]},
    "rag": {
        "model": "docs_qa",
        "messages": [{"role": "user", "content": "Which port does the gateway use?"}],
    },
}
GROUPS = ("replicas", "nginx", "postgres", "redis", "chroma", "wrk", "other")


@dataclass
class Cell:
    scenario: str
    replicas: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    seconds: float
    cpu: dict[str, float] = field(default_factory=dict)  # group -> cores busy (1.0 = one core)
    warm_up_answered: int = 0


# -- the topology -------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.env = {
            **os.environ,
            "OPSGATE_TOPOLOGY_ID": str(args.topology_id),
            "OPSGATE_BIN": str(Path(sys.executable).parent / "opsgate"),
        }
        self.values: dict[str, str] = {}
        self.project = Path(tempfile.mkdtemp(prefix="opsgate-scaleout-"))

    def sh(self, *args: str) -> str:
        result = subprocess.run(
            ["bash", str(TOPOLOGY), *args], env=self.env, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise SystemExit(f"deploy/topology.sh {' '.join(args)} failed:\n{result.stderr}")
        return result.stdout

    def make_project(self) -> None:
        shutil.copytree(REPO / "config", self.project / "config", ignore=shutil.ignore_patterns("models"))
        shutil.copytree(REPO / "docs", self.project / "docs")
        (self.project / "prompts").mkdir()
        shutil.copy(REPO / "prompts" / "docs_qa.yaml", self.project / "prompts" / "docs_qa.yaml")
        self.env["OPSGATE_PROJECT_DIR"] = str(self.project)

    def up(self, replicas: int) -> None:
        out = self.sh("up", "--replicas", str(replicas))
        self.values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    @property
    def state(self) -> Path:
        return Path(self.values["TOPOLOGY_DIR"])

    def app_key(self) -> str:
        admin = (self.state / "admin.key").read_text().strip()
        with httpx.Client(base_url=self.values["TOPOLOGY_URL"], trust_env=False, timeout=30) as http:
            r = http.post(
                "/admin/keys",
                headers={"Authorization": f"Bearer {admin}"},
                json={"name": "bench", "roles": ["app"], "principal": "bench"},
            )
            r.raise_for_status()
            key = str(r.json()["key"])
            deadline = time.monotonic() + 10
            while http.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code != 200:
                if time.monotonic() > deadline:
                    raise SystemExit("the bench key never became valid")
                time.sleep(0.1)
        return key

    # -- CPU accounting ---------------------------------------------------------------------------------

    def group_roots(self) -> dict[str, list[int]]:
        def pid(path: Path) -> list[int]:
            try:
                return [int(path.read_text().split()[0])]
            except (OSError, ValueError, IndexError):
                return []

        replicas = [
            p
            for i in range(1, int(self.values["TOPOLOGY_REPLICAS"]) + 1)
            for p in pid(self.state / f"r{i}" / "pid")
        ]
        return {
            "replicas": replicas,
            "nginx": pid(self.state / "nginx" / "master.pid"),
            "postgres": pid(self.state / "postgres" / "data" / "postmaster.pid"),
            "redis": pid(self.state / "redis" / "redis.pid"),
            "chroma": pid(self.state / "chroma" / "pid"),
        }


def cpu_ticks() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, utime + stime of the process, all its threads)."""
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        out[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return out


def group_of(pid: int, procs: dict[int, tuple[int, int]], roots: dict[int, str]) -> str:
    seen = 0
    while pid in procs and seen < 64:
        if pid in roots:
            return roots[pid]
        pid = procs[pid][0]
        seen += 1
    return "other"


def machine_busy_ticks() -> int:
    """Busy time of every CPU since boot (/proc/stat: all but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4]


def cpu_by_group(
    before: dict[int, tuple[int, int]],
    after: dict[int, tuple[int, int]],
    roots: dict[int, str],
    seconds: float,
    machine_busy: int,
) -> dict[str, float]:
    """Cores busy per group; 'other' is the machine's busy time less ours (processes that came and went
    during the run included)."""
    busy = dict.fromkeys(GROUPS, 0.0)
    for pid, (_, ticks) in after.items():
        spent = ticks - before.get(pid, (0, 0))[1]
        if spent > 0:
            busy[group_of(pid, after, roots)] += spent / CLK_TCK / seconds
    ours = sum(v for k, v in busy.items() if k != "other")
    busy["other"] = max(0.0, machine_busy / CLK_TCK / seconds - ours)
    return {k: round(v, 2) for k, v in busy.items()}


# -- load -----------------------------------------------------------------------------------------------


def wrk_script(key: str, body: dict[str, Any], folder: Path) -> Path:
    path = folder / "post.lua"
    payload = orjson.dumps(body).decode().replace("\\", "\\\\").replace('"', '\\"')
    path.write_text(
        'wrk.method = "POST"\n'
        f'wrk.body = "{payload}"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {key}"\n'
    )
    return path


def run_wrk(
    url: str, script: Path, connections: int, seconds: float, roots: dict[int, str]
) -> tuple[str, dict[str, float], float]:
    """wrk's report, CPU by group over the run, and the run's wall seconds."""
    before = cpu_ticks()
    machine = machine_busy_ticks()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    wrk = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    elapsed = time.monotonic() - started
    after, machine = cpu_ticks(), machine_busy_ticks() - machine
    done = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk has exited: its CPU is a child's
    wrk_cpu = (done.ru_utime + done.ru_stime - children.ru_utime - children.ru_stime) / elapsed
    cpu = cpu_by_group(before, after, roots, elapsed, machine - round(wrk_cpu * elapsed * CLK_TCK))
    cpu["wrk"] = round(wrk_cpu, 2)
    return wrk.stdout, cpu, elapsed


def parse_wrk(out: str) -> tuple[float, float, float, int, int]:
    def ms(label: str) -> float:
        m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return float("nan")
        value = float(m.group(1))
        return value / 1000 if m.group(2) == "us" else value * 1000 if m.group(2) == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(g) for g in m.groups())
    return rps, ms("50"), ms("99"), errors, total


def measure(bench: Bench, key: str, scenario: str, replicas: int, work: Path) -> Cell:
    url = bench.values["TOPOLOGY_URL"] + "/v1/chat/completions"
    script = wrk_script(key, SCENARIOS[scenario], work)
    roots = {pid: group for group, pids in bench.group_roots().items() for pid in pids}
    warm, _, _ = run_wrk(url, script, bench.args.connections, 3, roots)  # lexical index, connections, caches
    out, cpu, elapsed = run_wrk(url, script, bench.args.connections, bench.args.duration, roots)
    rps, p50, p99, errors, total = parse_wrk(out)
    _, _, _, warm_errors, warm_total = parse_wrk(warm)
    return Cell(scenario, replicas, rps, p50, p99, errors, total, elapsed, cpu, warm_total - warm_errors)


def logged_rows(bench: Bench) -> int:
    from sqlalchemy import func, select
    from sqlalchemy.orm import Session

    from gateway.db.engine import make_engine
    from gateway.db.models import RequestLog

    engine = make_engine(bench.values["TOPOLOGY_DATABASE_URL"])
    try:
        with Session(engine) as session:
            return int(session.scalar(select(func.count()).select_from(RequestLog)) or 0)
    finally:
        engine.dispose()


# -- report --------------------------------------------------------------------------------------------------


def machine_context() -> str:
    load = Path("/proc/loadavg").read_text().split()[:3]
    ps = subprocess.run(
        ["ps", "-eo", "pcpu,comm", "--sort=-pcpu", "--no-headers"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()[:6]
    top = "; ".join(" ".join(line.split()) for line in ps)
    return f"load average {' '.join(load)}; busiest processes (%CPU since start): {top}"


def print_table(cells: list[Cell]) -> None:
    head = (
        "| scenario | replicas | req/s | p50 ms | p99 ms | errors | gw CPU ms/req | "
        + " | ".join(GROUPS)
        + " |"
    )
    print(head)
    print("|" + " --- |" * (7 + len(GROUPS)))
    for c in cells:
        cpu = " | ".join(f"{c.cpu.get(g, 0):.2f}" for g in GROUPS)
        per_request = c.cpu.get("replicas", 0) * 1000 / c.rps if c.rps else float("nan")
        print(
            f"| {c.scenario} | {c.replicas} | {c.rps:,.0f} | {c.p50_ms:.1f} | {c.p99_ms:.1f} | {c.errors} |"
            f" {per_request:.2f} | {cpu} |"
        )
    print("CPU columns: cores busy during the measurement (1.00 = one whole core); 'other' is everything")
    print("else on the machine (other engineers' work included). gw CPU ms/req: the replicas' CPU time per")
    print("answered request (it does not depend on how busy the machine is; requests/s does).")
    for scenario in SCENARIOS:
        one = [c.rps for c in cells if c.scenario == scenario and c.replicas == 1]
        two = [c.rps for c in cells if c.scenario == scenario and c.replicas == 2]
        if one and two:
            print(f"{scenario}: 2 replicas / 1 replica = {max(two) / max(one):.2f}x (best of each)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=15, help="seconds of load per cell")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of (2 replicas, 1 replica)")
    parser.add_argument("--topology-id", type=int, default=90)
    parser.add_argument("--keep", action="store_true", help="leave the topology running")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/scaleout.py needs root (network namespaces)")
    subprocess.run(["bash", str(REPO / "deploy" / "install-deps.sh"), "--bench"], check=True)
    sys.path.insert(0, str(REPO))
    bench = Bench(args)
    bench.make_project()
    print(f"before: {machine_context()}", flush=True)
    cells: list[Cell] = []
    work = Path(tempfile.mkdtemp(prefix="opsgate-scaleout-wrk-"))
    try:
        bench.up(2)
        key = bench.app_key()
        for _ in range(args.rounds):
            for replicas in (2, 1):
                bench.up(replicas)
                time.sleep(1)
                for scenario in SCENARIOS:
                    cell = measure(bench, key, scenario, replicas, work)
                    print(f"  {scenario} x{replicas}: {cell.rps:,.0f} req/s, cpu {cell.cpu}", flush=True)
                    cells.append(cell)
        answered = sum(c.requests - c.errors + c.warm_up_answered for c in cells)
        time.sleep(2)
        rows = logged_rows(bench)
        print(f"after: {machine_context()}")
        print(f"nproc {os.cpu_count()}, {args.connections} connections, {args.duration:g} s per cell")
        print_table(cells)
        print(f"request log: {rows} rows for {answered} answered requests (warm-ups included; wrk may")
        print("abandon a few at the end of a run, and those are logged too)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not args.keep:
            bench.sh("down")
            shutil.rmtree(bench.project, ignore_errors=True)


if __name__ == "__main__":
    main()
