"""Classic-model serving: opsgate vs `mlflow models serve`, same model, same machine, same load.

    .venv/bin/python bench/ml_bench.py [--duration 15] [--connections 16] [--mlflow-venv /work/mlflow-venv]

Trains a logistic-regression pipeline on scikit-learn's breast cancer data (30 features), registers it
in a throwaway opsgate project (skops) and saves the same fitted object with mlflow.sklearn in a separate
venv (mlflow is not an opsgate dependency). Both servers get the identical MLflow `dataframe_split`
body for one row at `/invocations` under wrk (2 threads), and are measured one at a time. Also measured:
sequential single-client latency (http.client, keep-alive) and the in-process predict it wraps, so the
gateway's overhead = client p50 - in-process p50. Both servers run one worker process.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OPSGATE = REPO / ".venv" / "bin" / "opsgate"
LUA = """wrk.method = "POST"
wrk.body = [==[%s]==]
wrk.headers["Content-Type"] = "application/json"
%s
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"bench: {url} not ready in {timeout} s")


def train(project: Path):  # type: ignore[no-untyped-def]
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from gateway.ml import register

    data = load_breast_cancer(as_frame=True)
    x = data.data.rename(columns=lambda c: c.replace(" ", "_"))
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(x, data.target)
    register(model, "cancer", {c: {"type": "number", "min": 0} for c in x.columns}, x, project_dir=project)
    return model, x


def wrk(
    url: str, body: str, headers: str, duration: int, connections: int, workdir: Path
) -> dict[str, float]:
    script = workdir / "post.lua"
    script.write_text(LUA % (body, headers), encoding="utf-8")
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = {}
    for pct in ("50", "99"):
        m = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)\b", out)
        assert m, out
        lat[pct] = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rps,
        "p50_ms": lat["50"],
        "p99_ms": lat["99"],
        "non_2xx": float(errors.group(1)) if errors else 0.0,
    }


def sequential(url: str, body: str | None, headers: dict[str, str], n: int = 1000) -> float:
    """Median latency of one keep-alive client sending requests back to back (http.client: a thin client,
    so the figure is the server's time plus loopback, not a heavy client library's)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    payload = body.encode() if body is not None else None
    send_headers = {"Content-Type": "application/json", **headers}
    times = []
    for i in range(n + 50):
        t = time.perf_counter()
        conn.request("POST" if payload is not None else "GET", parts.path, body=payload, headers=send_headers)
        response = conn.getresponse()
        data = response.read()
        if i >= 50:
            times.append((time.perf_counter() - t) * 1000)
        assert response.status == 200, data
    conn.close()
    return statistics.median(times)


def in_process(model, x) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    import warnings

    import numpy as np

    warnings.simplefilter("ignore")  # a bare matrix has no feature names: sklearn says so on every call

    row_np = np.asarray(x.iloc[:1].to_numpy(), dtype=float)
    row_df = x.iloc[:1]
    out = []
    for arg in (row_np, row_df):
        times = []
        for i in range(1050):
            t = time.perf_counter()
            model.predict_proba(arg)
            if i >= 50:
                times.append((time.perf_counter() - t) * 1000)
        out.append(statistics.median(times))
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=15)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--mlflow-venv", default="/work/mlflow-venv")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("bench: wrk not found (apt-get install -y wrk)")
    mlflow_bin = Path(args.mlflow_venv) / "bin"
    if not (mlflow_bin / "mlflow").exists():
        raise SystemExit(
            f"bench: no mlflow in {args.mlflow_venv} (python3.11 -m venv it; pip install mlflow scikit-learn==1.9.1)"
        )
    work = Path(tempfile.mkdtemp(prefix="opsgate-ml-bench-"))
    project = work / "project"
    shutil.copytree(REPO / "config", project / "config", ignore=shutil.ignore_patterns("models", "indexes"))
    (project / "config" / "gateway.yaml").write_text("ml: {monitor_interval_s: 0}\n", encoding="utf-8")
    model, x = train(project)
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=b@example.org", "commit", "-qm", "bench"],
                   cwd=project, check=True)  # fmt: skip
    mlflow_model = work / "mlflow-model"
    subprocess.run(
        [str(mlflow_bin / "python"), "-c",
         "import sys, skops.io as sio, mlflow.sklearn; m = sio.load(sys.argv[1], trusted=sio.get_untrusted_types(file=sys.argv[1]));"
         " mlflow.sklearn.save_model(m, sys.argv[2])",
         str(project / "config/models/cancer.skops"), str(mlflow_model)],
        check=True, capture_output=True,
    )  # fmt: skip
    body = json.dumps(
        {"dataframe_split": {"columns": list(x.columns), "data": x.iloc[:1].to_numpy().tolist()}}
    )
    og_port, mf_port = free_port(), free_port()
    env = {**os.environ, "OPSGATE_PROJECT_DIR": str(project), "OPSGATE_DATA_DIR": str(work / "data")}
    results = {}
    procs = []
    try:
        og = subprocess.Popen([str(OPSGATE), "serve", "--port", str(og_port)], cwd=project, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        procs.append(og)
        wait_ready(f"http://127.0.0.1:{og_port}/readyz")
        key = (work / "data" / "admin.key").read_text().strip()
        og_url = f"http://127.0.0.1:{og_port}/v1/ml/cancer/invocations"
        sequential(og_url, body, {"authorization": f"Bearer {key}"}, 200)  # warm up (model load)
        seq = sequential(og_url, body, {"authorization": f"Bearer {key}"})
        results["opsgate"] = wrk(og_url, body, f'wrk.headers["Authorization"] = "Bearer {key}"', args.duration,
                                 args.connections, work)  # fmt: skip
        results["opsgate"]["seq_p50_ms"] = seq
        floor = sequential(f"http://127.0.0.1:{og_port}/healthz", None, {})
        os.killpg(og.pid, signal.SIGTERM)
        og.wait(30)
        mf = subprocess.Popen(
            [str(mlflow_bin / "mlflow"), "models", "serve", "-m", str(mlflow_model), "-p", str(mf_port),
             "--env-manager", "local", "-w", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, "PATH": f"{mlflow_bin}:{os.environ['PATH']}"},
        )  # fmt: skip
        procs.append(mf)
        wait_ready(f"http://127.0.0.1:{mf_port}/ping")
        mf_url = f"http://127.0.0.1:{mf_port}/invocations"
        sequential(mf_url, body, {}, 200)
        seq = sequential(mf_url, body, {})
        results["mlflow"] = wrk(mf_url, body, "", args.duration, args.connections, work)
        results["mlflow"]["seq_p50_ms"] = seq
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(30)
    np_p50, df_p50 = in_process(model, x)
    og, mf = results["opsgate"], results["mlflow"]
    print(
        f"model: LogisticRegression pipeline, breast cancer (30 features), 1 row per request; "
        f"wrk -t2 -c{args.connections} -d{args.duration}s; 1 worker each; {os.cpu_count()} cores (shared machine)"
    )
    print(f"{'':10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'seq p50 ms':>11} {'non-2xx':>8}")
    for name, r in results.items():
        print(
            f"{name:10} {r['rps']:9.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['seq_p50_ms']:11.3f} {r['non_2xx']:8.0f}"
        )
    print(f"throughput ratio opsgate/mlflow: {og['rps'] / mf['rps']:.1f}x (target >= 5x)")
    print(
        f"in-process predict_proba p50: {np_p50:.3f} ms (matrix, what opsgate calls), {df_p50:.3f} ms (DataFrame)"
    )
    print(
        f"opsgate overhead at p50 (sequential client p50 - in-process p50): {og['seq_p50_ms'] - np_p50:.3f} ms"
        " (target <= 1 ms; includes HTTP over loopback and the client)"
    )
    print(f"for scale: GET /healthz on the same server and client, p50 {floor:.3f} ms (HTTP + client floor)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
