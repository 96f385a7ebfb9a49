"""SIGTERM with streams in flight: requests run on for `server.shutdown_grace_s`; streams still open then
end with an SSE error event and finish_reason "error", and their rows say the server cut them."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import orjson

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import GatewayProcess, deployment
from tests.fakes.upstream import FakeUpstream

GRACE_S = 1.0
GATEWAY_YAML = f"server:\n  shutdown_grace_s: {GRACE_S}\nrequest_log:\n  flush_interval_s: 0.02\n"


def read_stream(gw: GatewayProcess, model: str, out: dict[str, Any]) -> None:
    with (
        gw.http(timeout=30) as http,
        http.stream(
            "POST",
            "/v1/chat/completions",
            json={
                "model": model,
                "messages": [{"role": "user", "content": "one two three four five six"}],
                "stream": True,
            },
            headers=gw.auth(),
        ) as r,
    ):
        out["id"] = r.headers["x-opsgate-request-id"]
        out["events"] = []
        for line in r.iter_lines():
            if line.startswith("data: "):
                out["events"].append(line[6:])
                if len(out["events"]) == 2:
                    out["started"] = time.monotonic()


def test_streams_still_open_after_the_grace_period_are_cut_with_an_error_event(
    fake_upstream: FakeUpstream, project_factory: ProjectFactory, gateway_factory: GatewayFactory
) -> None:
    routers = {"dripping": {"deployments": [deployment("slow", fake_upstream.url("drip-3000"))]}}
    project = project_factory(routers, files={"config/gateway.yaml": GATEWAY_YAML})
    gw = gateway_factory(project)
    streams = [{} for _ in range(3)]  # type: list[dict[str, Any]]
    readers = [threading.Thread(target=read_stream, args=(gw, "dripping", s)) for s in streams]
    for t in readers:
        t.start()
    deadline = time.monotonic() + 10
    while not all("started" in s for s in streams):
        assert time.monotonic() < deadline, streams
        time.sleep(0.02)
    assert gw.process is not None
    signalled = time.monotonic()
    gw.process.send_signal(signal.SIGTERM)
    for t in readers:
        t.join(timeout=15)
    exit_code = gw.process.wait(timeout=15)
    took = time.monotonic() - signalled
    assert exit_code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled, once shut down
    assert GRACE_S <= took < GRACE_S + 5, took  # the grace period, not the 3 s drip nor a fixed 10 s
    for s in streams:
        events = s["events"]
        assert events[-1] != "[DONE]"
        finish = orjson.loads(events[-2])
        assert finish["choices"][0]["finish_reason"] == "error"
        error = orjson.loads(events[-1])["error"]
        assert error["code"] == "stream_cut_by_server" and error["type"] == "server_error"
    rows = gw.log_rows([s["id"] for s in streams])
    for row in rows.values():
        assert (row["status"], row["error_type"], row["stream"]) == (503, "stream_cut_by_server", True)
