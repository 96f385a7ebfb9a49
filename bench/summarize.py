"""Markdown summary of one harness run (bench/runs/<stamp>/results.json), for bench/README.md.

    .venv/bin/python bench/summarize.py bench/runs/<stamp>/results.json

Medians of the rounds per target, mode and concurrency (as peer.sh prints them), the same-round
opsgate/LiteLLM ratios, and how noisy the run was (cells where other processes used the CPUs).
Standard library only.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections import defaultdict
from typing import Any

TARGET = "opsgate"
PEER = "litellm"


def med(values: list[float | None]) -> float:
    """Median of the rounds that have the figure (a cell with no completed request has no latency)."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else float("nan")


def fmt(value: float) -> str:
    if math.isnan(value):
        return "-"
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def main(path: str) -> None:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    cells: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in data["results"]:
        if r.get("kind") != "ttft":
            cells[(r["target"], r["mode"], r["conc"])].append(r)
    modes = sorted({m for _, m, _ in cells}, key=("chat", "stream", "embed").index)
    concs = sorted({c for _, _, c in cells})
    print("| path | mode | c | RPS | p50 ms | p99 ms | gw CPU ms/req |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for target in ("direct", TARGET, PEER):
        for mode in modes:
            for conc in concs:
                rs = cells.get((target, mode, conc))
                if not rs:
                    continue
                cpu = [r["cpu_ms_per_req"] for r in rs if r.get("cpu_ms_per_req") is not None]
                print(
                    f"| {target} | {mode} | {conc} | {fmt(med([r['rps'] for r in rs]))} "
                    f"| {fmt(med([r['lat_p50_ms'] for r in rs]))} | {fmt(med([r['lat_p99_ms'] for r in rs]))} "
                    f"| {fmt(med(cpu)) if cpu else ''} |"
                )
    print()
    for mode in modes:
        for conc in concs:
            ours, peer = cells.get((TARGET, mode, conc)), cells.get((PEER, mode, conc))
            if not ours or not peer:
                continue
            by_round = {r["round"]: r for r in peer}
            rps = sorted(
                o["rps"] / by_round[o["round"]]["rps"]
                for o in ours
                if o["round"] in by_round and by_round[o["round"]]["rps"]
            )
            cpu = sorted(
                by_round[o["round"]]["cpu_ms_per_req"] / o["cpu_ms_per_req"]
                for o in ours
                if o["round"] in by_round
                and o.get("cpu_ms_per_req")
                and by_round[o["round"]].get("cpu_ms_per_req")
            )
            if not rps or not cpu:
                continue
            print(
                f"- {mode} c={conc}: {TARGET}/{PEER} RPS {med(rps):.1f}x (rounds {rps[0]:.1f}-{rps[-1]:.1f}x), "
                f"{PEER}/{TARGET} CPU per request {med(cpu):.1f}x"
            )
    gw_cells = [r for rs in cells.values() for r in rs if r["target"] != "direct"]
    all_cells = [r for rs in cells.values() for r in rs]
    foreign = [r.get("foreign_cpu_pct") or 0.0 for r in all_cells]
    busy0 = [r.get("gw_cpu_others_pct") or 0.0 for r in gw_cells]
    print()
    print(
        f"Noise: other processes used {statistics.mean(foreign):.0f}% of a CPU on average (max "
        f"{max(foreign):.0f}%); {sum(f > 10 for f in foreign)} of {len(foreign)} cells above 10%; CPU 0 "
        f"(the gateways') busy with others >= 10% in {sum(b >= 10 for b in busy0)} of {len(busy0)} gateway cells."
    )


if __name__ == "__main__":
    main(sys.argv[1])
