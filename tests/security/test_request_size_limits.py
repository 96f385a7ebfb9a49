"""Issue 11, findings 11 and 12: single requests that burned CPU or memory, or answered 500.

- Embeddings: 20,000 inputs took 30 s of CPU, one 4 MB input added 616 MB of memory, and token ids
  outside the vocabulary (`[-1]`, `[[-1]]`, `[100277]`) answered 500 with no log row. Now: at most
  `limits.embeddings.max_inputs` inputs, `max_input_chars` characters or `max_input_tokens` token ids
  each, ids inside the vocabulary; 400 naming the input otherwise.
- The local provider stalled the event loop for seconds on a 4 MB message. Now its input is bounded
  (`limits.local.max_input_chars`: 400 input_too_large, param messages) and its work runs off the loop.
Every refusal writes exactly one log row (assert_error checks it).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import FAST_GATEWAY_YAML, GatewayProcess, assert_error


@pytest.fixture(scope="module")
def gw(project_factory: ProjectFactory, gateway_factory: GatewayFactory) -> GatewayProcess:
    return gateway_factory(project_factory(files={"config/gateway.yaml": FAST_GATEWAY_YAML}))


BAD_EMBEDDINGS: list[tuple[Any, str, str]] = [
    ([[-1]], "invalid_token_id", "input.0.0"),
    ([-1], "invalid_token_id", "input.0"),
    ([100277], "invalid_token_id", "input.0"),
    ([[1, 2], [3, 10**12]], "invalid_token_id", "input.1.1"),
    (["word"] * 2049, "too_many_inputs", "input"),
    ([[1]] * 2049, "too_many_inputs", "input"),
    ("x" * 40_000, "input_too_large", "input"),
    (["fine", "x" * 40_000], "input_too_large", "input.1"),
    ([[5] * 9000], "input_too_large", "input.0"),
]


@pytest.mark.parametrize(("value", "code", "param"), BAD_EMBEDDINGS, ids=[c for _, c, _ in BAD_EMBEDDINGS])
def test_bad_embedding_inputs_get_a_400_naming_the_input(
    gw: GatewayProcess, value: Any, code: str, param: str
) -> None:
    started = time.monotonic()
    with gw.http() as http:
        r = http.post("/v1/embeddings", json={"model": "minilm", "input": value}, headers=gw.auth())
    assert_error(gw, r, 400, type_="invalid_request_error", code=code, param=param)
    assert time.monotonic() - started < 5


def test_embeddings_within_limits_still_work(gw: GatewayProcess) -> None:
    client = gw.client()
    done = client.embeddings.create(model="minilm", input=[[9906, 1917], [15339]])
    assert len(done.data) == 2 and len(done.data[0].embedding) == 384
    done = client.embeddings.create(model="minilm", input=["word"] * 100)
    assert len(done.data) == 100


def test_a_huge_message_to_the_local_provider_is_refused_and_stalls_nothing(gw: GatewayProcess) -> None:
    big = "Oslo is the capital of Norway. " * 130_000  # ~4 MB
    body = {
        "model": "default",
        "messages": [{"role": "system", "content": big}, {"role": "user", "content": "?"}],
    }
    answers: list[httpx.Response] = []
    heavy = threading.Thread(
        target=lambda: answers.append(
            httpx.post(gw.root_url + "/v1/chat/completions", json=body, headers=gw.auth(), timeout=60)
        )
    )
    heavy.start()
    worst = 0.0
    with gw.http() as http:
        while heavy.is_alive():
            t = time.monotonic()
            assert http.get("/healthz").status_code == 200
            worst = max(worst, time.monotonic() - t)
            time.sleep(0.02)
    heavy.join()
    assert_error(gw, answers[0], 400, type_="invalid_request_error", code="input_too_large", param="messages")
    assert worst < 0.5, f"/healthz took {worst:.2f} s beside a 4 MB local chat"
    ok = gw.client().chat.completions.create(
        model="default",
        messages=[
            {"role": "system", "content": "Oslo is the capital of Norway."},
            {"role": "user", "content": "What is the capital of Norway?"},
        ],
    )
    assert "Oslo" in (ok.choices[0].message.content or "")
