"""Online evaluation on a running gateway: deterministic sampling by request id, scores stored per request
with versions, rolling means in /metrics and the CLI, and a signed webhook alert under the threshold."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.db.models import OnlineEvalScore
from gateway.evaluation.online import sampled
from gateway.monitoring.alerts import verify
from tests.conftest import GatewayFactory, ProjectFactory
from tests.evaluation.conftest import JUDGE_ENV, judge_router
from tests.fakes.gateway import REPO, GatewayProcess
from tests.fakes.upstream import FakeUpstream

RATE = 0.5
PROMPT = """\
name: qa
router: default
online_eval:
  sample_rate: 0.5
  metrics: [response_relevancy, tokens_out]
  judge: judge_no
  thresholds: {response_relevancy: 0.5}
  window: 3
messages:
  - role: system
    content: "Berlin is the capital of Germany. The Rhine flows through Germany and the Netherlands."
"""


class Hooks(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append({"headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture(scope="module")
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hooks)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", Hooks.received
    server.shutdown()


@pytest.fixture(scope="module")
def online_gateway(
    project_factory: ProjectFactory,
    gateway_factory: GatewayFactory,
    judge_upstream: FakeUpstream,
    webhook: tuple[str, list[dict[str, Any]]],
) -> Iterator[GatewayProcess]:
    config = (REPO / "config" / "gateway.yaml").read_text(encoding="utf-8")
    config += f"\nalerts:\n  webhooks:\n    - {{url: '{webhook[0]}', secret_env: HOOK_SECRET, retries: 0}}\n"
    project = project_factory(
        routers={"judge_no": judge_router(judge_upstream, "judge-0")},
        files={"prompts/qa.yaml": PROMPT, "config/gateway.yaml": config},
    )
    with gateway_factory(project, env={**JUDGE_ENV, "HOOK_SECRET": "s3cret"}) as gateway:
        yield gateway


def test_sampling_is_deterministic_and_scores_alert_and_roll(
    online_gateway: GatewayProcess, webhook: tuple[str, list[dict[str, Any]]]
) -> None:
    gw = online_gateway
    client = gw.client()
    ids: list[str] = []
    for i in range(24):
        question = {"role": "user", "content": f"What is the capital of Germany? ({i})"}
        if i % 4 == 3:  # streamed answers are captured and scored too
            with client.chat.completions.with_streaming_response.create(
                model="qa", messages=[question], stream=True
            ) as raw:
                ids.append(raw.headers["x-opsgate-request-id"])
                assert "Berlin" in "".join(raw.iter_lines())
        else:
            raw_sync = client.chat.completions.with_raw_response.create(model="qa", messages=[question])
            ids.append(raw_sync.headers["x-opsgate-request-id"])
    expected = {rid for rid in ids if sampled(rid, RATE)}
    assert 0 < len(expected) < len(ids)
    rows = wait_for_scores(gw, expected)
    scored = {r.request_id for r in rows}
    assert scored == expected  # exactly the ids the hash picks, nothing else
    assert {r.metric for r in rows} == {"response_relevancy", "tokens_out"}
    assert all(r.prompt == "qa" and r.prompt_version == 1 and len(r.prompt_hash) == 64 for r in rows)
    assert all(any(v.startswith("router:default@1#") for v in r.versions) for r in rows)
    assert all(r.score == 0.0 for r in rows if r.metric == "response_relevancy")  # judge-0: noncommittal

    deadline = time.monotonic() + 20
    alerts: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not alerts:
        alerts = [h for h in webhook[1] if h["headers"].get("x-opsgate-event") == "online_eval"]
        time.sleep(0.1)
    assert len(alerts) == 1  # once, while the mean stays under the threshold
    event = orjson.loads(alerts[0]["body"])
    assert event["prompt"] == "prompt:qa@1" and event["metric"] == "response_relevancy"
    assert event["rolling_mean"] == 0.0 and event["threshold"] == 0.5 and event["window"] == 3
    headers = alerts[0]["headers"]
    assert verify("s3cret", headers["x-opsgate-timestamp"], alerts[0]["body"], headers["x-opsgate-signature"])

    metrics = gw.metrics()
    assert (
        'opsgate_online_eval_rolling_mean{metric="response_relevancy",prompt="qa",version="1"} 0.0' in metrics
    )
    assert 'opsgate_online_eval_total{outcome="dropped"}' not in metrics
    means = [orjson.loads(line) for line in gw.cli("eval", "online", "--json").stdout.splitlines()]
    relevancy = next(m for m in means if m["metric"] == "response_relevancy")
    assert relevancy["mean"] == 0.0 and relevancy["n"] == 3 and relevancy["total"] == len(expected)
    with gw.http() as http:  # the same figures on the admin API
        admin = http.get("/admin/online-eval", params={"prompt": "qa"}, headers=gw.auth()).json()
    assert next(m for m in admin if m["metric"] == "response_relevancy") == relevancy


def wait_for_scores(gw: GatewayProcess, expected: set[str], timeout: float = 90) -> list[OnlineEvalScore]:
    deadline = time.monotonic() + timeout
    while True:
        with Session(gw._db()) as s:
            rows = list(s.scalars(select(OnlineEvalScore)))
        if {r.request_id for r in rows} >= expected or time.monotonic() > deadline:
            time.sleep(0.5)  # anything wrongly sampled would have arrived by now too
            with Session(gw._db()) as s:
                return list(s.scalars(select(OnlineEvalScore)))
        time.sleep(0.2)
