"""A database outage under load (issue 13): the real gateway on a throwaway PostgreSQL (the machine's
binaries, a free port; the shared one is not touched), `--clients` threads posting chat (the repo's
`default` router, answered locally), PostgreSQL stopped for `--outage` s in the middle, then started
again. Prints requests answered and failed during the outage, the spool's peak (rows, bytes, age from
/readyz), how long the replay took once the database was back, the rows missing or doubled afterwards,
and how much the gateway logged during the outage.

    .venv/bin/python bench/db_outage.py --outage 20 --clients 8

Bounded: about outage + 30 s. Say what else ran on the machine when you quote the figures.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fakes.gateway import GatewayProcess, build_project
from tests.fakes.services import ThrowawayPostgres

CHAT = {"model": "default", "messages": [{"role": "user", "content": "outage bench"}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--before", type=float, default=3.0)
    parser.add_argument("--outage", type=float, default=20.0)
    parser.add_argument("--after", type=float, default=5.0)
    args = parser.parse_args()
    pg = ThrowawayPostgres().init()
    tmp = Path(tempfile.mkdtemp(prefix="opsgate-outage-"))
    gw = GatewayProcess(build_project(tmp / "project"), data_dir=tmp / "data", database_url=pg.url).start()
    answered: dict[str, float] = {}
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=gw.root_url, trust_env=False, timeout=10) as http:
            while not stop.is_set():
                try:
                    r = http.post("/v1/chat/completions", json=CHAT, headers=gw.auth())
                    status = r.status_code
                except httpx.HTTPError:
                    status = 0
                with lock:
                    statuses[status] += 1
                    if status == 200:
                        answered[r.headers["x-opsgate-request-id"]] = time.monotonic()

    try:
        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for t in threads:
            t.start()
        time.sleep(args.before)
        log_before = len(gw.output())
        pg.stop()
        down_at = time.monotonic()
        peak: dict[str, float] = {"rows": 0, "bytes": 0, "age_s": 0}
        ready: Counter[str] = Counter()
        with httpx.Client(base_url=gw.root_url, trust_env=False, timeout=10) as http:
            while time.monotonic() - down_at < args.outage:
                r = http.get("/readyz")
                ready[f"{r.status_code} {r.json()['status']}"] += 1
                spool = r.json()["checks"]["request_log"]["spool"]
                peak = {k: max(v, spool[k]) for k, v in peak.items()}
                time.sleep(0.5)
        during = {s: n for s, n in statuses.items()}
        log_during = len(gw.output()) - log_before
        pg.start()
        up_at = time.monotonic()
        with httpx.Client(base_url=gw.root_url, trust_env=False, timeout=10) as http:
            while http.get("/readyz").json()["checks"]["request_log"]["spool"]["rows"] > 0:
                time.sleep(0.1)
        drained = time.monotonic() - up_at
        time.sleep(args.after)
        stop.set()
        for t in threads:
            t.join()
        rate = len(answered) / (time.monotonic() - down_at + args.before)
        ids = list(answered)
        time.sleep(1)
        counts = Counter(gw.count_rows(i) for i in ids)
        print(f"load: {args.clients} clients, {rate:.0f} answered/s overall; outage {args.outage:.0f} s")
        print(f"statuses until the database came back: {during}")
        print(f"/readyz during the outage: {dict(ready)}")
        print(
            f"spool peak: {peak['rows']:.0f} rows, {peak['bytes'] / 1e6:.1f} MB, oldest {peak['age_s']:.1f} s"
        )
        print(f"replayed within {drained:.1f} s of the database's return (while serving)")
        print(
            f"rows: {len(ids)} answered; {counts.get(1, 0)} with one row, {counts.get(0, 0)} missing,"
            f" {sum(n for c, n in counts.items() if c > 1)} doubled"
        )
        print(f"log written during the outage: {log_during} bytes ({log_during / args.outage:.0f} B/s)")
    finally:
        stop.set()
        gw.stop()
        pg.destroy()


if __name__ == "__main__":
    main()
