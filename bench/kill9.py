"""What a kill -9 under load costs the request log (issue 13): the real gateway (`opsgate serve`) on a
throwaway project, `--clients` threads posting chat (the repo's `default` router, answered locally), a
SIGKILL after `--kill-after` s, a restart on the same data dir (which replays the spool), then every
answered request id looked up. Prints, per round, the requests answered, the rows lost, and how long
before the kill the lost ones were answered (the batch window: `request_log.flush_interval_s` plus the
insert), and the requests/s, so the loss can be read as "N ms of traffic".

    .venv/bin/python bench/kill9.py --rounds 3                    # SQLite, database up
    .venv/bin/python bench/kill9.py --database-url postgresql://postgres@127.0.0.1:5432/DB

Bounded: about 15 s per round. Say what else ran on the machine when you quote the figures.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fakes.gateway import GatewayProcess, build_project

CHAT = {"model": "default", "messages": [{"role": "user", "content": "kill -9 bench"}]}


def one_round(args: argparse.Namespace, work: Path, n: int) -> dict[str, float]:
    yaml = f"request_log:\n  flush_interval_s: {args.flush_interval}\n"
    project = build_project(work / f"project{n}", files={"config/gateway.yaml": yaml})
    data = work / f"data{n}"
    gw = GatewayProcess(project, data_dir=data, database_url=args.database_url).start()
    answered: dict[str, float] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=gw.root_url, trust_env=False, timeout=5) as http:
            while not stop.is_set():
                try:
                    r = http.post("/v1/chat/completions", json=CHAT, headers=gw.auth())
                except httpx.HTTPError:
                    continue
                if r.status_code == 200:
                    with lock:
                        answered[r.headers["x-opsgate-request-id"]] = time.monotonic()

    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    began = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(args.kill_after)
    assert gw.process is not None
    os.kill(gw.process.pid, signal.SIGKILL)
    killed = time.monotonic()
    gw.process.wait()
    stop.set()
    for t in threads:
        t.join()
    with GatewayProcess(
        project, data_dir=data, database_url=args.database_url, admin_key=gw.admin_key
    ) as again:
        again.start()
        deadline = time.monotonic() + 30
        while True:
            missing = [i for i in answered if again.count_rows(i) == 0]
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    ages = sorted(killed - answered[i] for i in missing)
    return {
        "answered": len(answered),
        "rps": len(answered) / (killed - began),
        "lost": len(missing),
        "oldest_lost_ms": ages[-1] * 1000 if ages else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--kill-after", type=float, default=4.0)
    parser.add_argument("--flush-interval", type=float, default=0.2)
    parser.add_argument("--database-url", default=None, help="default: SQLite in the data dir")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="opsgate-kill9-") as tmp:
        for n in range(args.rounds):
            r = one_round(args, Path(tmp), n)
            window = r["lost"] / r["rps"] * 1000 if r["rps"] else 0.0
            print(
                f"round {n + 1}: {r['answered']:.0f} answered at {r['rps']:.0f} req/s, {r['lost']:.0f} rows lost"
                f" (= {window:.0f} ms of traffic; the oldest answered {r['oldest_lost_ms']:.0f} ms before the kill)"
                f", flush_interval_s {args.flush_interval}"
            )


if __name__ == "__main__":
    main()
