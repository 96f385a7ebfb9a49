"""`/openapi.json` tells the truth: a schemathesis pass against the real server, driven by the published
schema alone, reaches every operation with valid and invalid bodies, and every answer conforms (status
documented, body and headers as the schema says, no 5xx, invalid data refused, a missing key a 401, a
wrong method a 405 with `Allow`).

Bounded: a fixed seed and a few examples per operation (the whole pass well under two minutes on 2 cores).
Model names are steered to the gateway's routers for half the bodies (deterministically), so valid bodies
also reach the upstream call instead of stopping at 404 model_not_found.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from schemathesis import GenerationMode

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import GatewayProcess, deployment
from tests.fakes.upstream import FakeUpstream

SEED = 20261205
MAX_EXAMPLES = 8
ROUTERS = ("local", "fake")
BUDGET_S = 110


@pytest.fixture(scope="module")
def fuzz_gateway(
    project_factory: ProjectFactory, gateway_factory: GatewayFactory, fake_upstream: FakeUpstream
) -> Iterator[GatewayProcess]:
    """A gateway of its own (the pass creates keys and registers the project): a local router and one on
    the fake upstream, and a body limit small enough that 413 is reached."""
    routers: dict[str, Any] = {
        "local": {"deployments": [{"id": "local", "model": "local/extractive"}]},
        "fake": {"deployments": [deployment("ok", fake_upstream.url("ok"))]},
    }
    gateway_yaml = "server:\n  max_body_bytes: 65536\nrequest_log:\n  flush_interval_s: 0.02\n"
    project = project_factory(routers=routers, files={"config/gateway.yaml": gateway_yaml})
    with gateway_factory(project) as gateway:
        yield gateway


def _steer_model(case: schemathesis.Case) -> schemathesis.Case:
    """Half the bodies (by a hash of the generated name: deterministic) name a router that exists. Only a
    non-empty string is replaced, by another non-empty string: a body stays valid or invalid as it was.
    A valid chat body gets a message when it has none: `messages` may be left out only when the model is
    a prompt that supplies them, which a schema cannot say (without one the answer is a 422)."""
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("model"), str) and body["model"]:
        name = body["model"]
        if zlib.crc32(name.encode("utf-8", "surrogatepass")) % 2 == 0:
            body = case.body = {**body, "model": ROUTERS[len(name) % len(ROUTERS)]}
        positive = case.meta is not None and case.meta.generation.mode == GenerationMode.POSITIVE
        if positive and case.operation.path == "/v1/chat/completions" and not body.get("messages"):
            case.body = {**body, "messages": [{"role": "user", "content": "hello"}]}
    return case


def _has_inputs(operation: Any) -> bool:
    return bool(list(operation.iter_parameters())) or bool(operation.body)


def _fuzz(operation: Any, mode: GenerationMode, headers: dict[str, str]) -> None:
    strategy = operation.as_strategy(generation_mode=mode).map(_steer_model)

    @hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.seed(SEED)
    @hypothesis.given(strategy)
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(headers=headers, timeout=30)

    run()


def test_every_operation_answers_as_published(fuzz_gateway: GatewayProcess) -> None:
    """Every operation, with valid then invalid data: each failure is collected (with the request that
    caused it), so one run names every non-conforming answer."""
    started = time.monotonic()
    schema = schemathesis.openapi.from_url(f"{fuzz_gateway.root_url}/openapi.json")
    schema.config.update(base_url=fuzz_gateway.root_url)
    # unknown query parameters are ignored (as HTTP APIs do), not refused: do not send them as "invalid"
    schema.config.generation.update(allow_extra_parameters=False)
    checks = schema.config.checks
    # 422 means "not the published shape"; 400 means "shaped right, refused for what it means" (an artifact
    # reference that does not parse, an unknown role, a model that serves embeddings asked for chat): a
    # schema-valid request may get a 400, never a 422
    checks.positive_data_acceptance.expected_statuses = [
        *checks.positive_data_acceptance.expected_statuses,
        "400",
    ]
    # a body over server.max_body_bytes is refused before it is read (413): a rejection too
    checks.negative_data_rejection.expected_statuses = [
        *checks.negative_data_rejection.expected_statuses,
        "413",
    ]
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 30
    failures: list[str] = []
    reached: set[str] = set()
    for operation in operations:
        modes = [GenerationMode.POSITIVE]
        if _has_inputs(operation):  # nothing to make invalid in GET /healthz
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:
            try:
                _fuzz(operation, mode, fuzz_gateway.auth())
            except (
                Exception,
                BaseExceptionGroup,
            ) as exc:  # a check failed: keep it, go on with the other operations
                failures.append(f"{operation.label} [{mode.value}]: {exc}")
            reached.add(operation.label)
    elapsed = time.monotonic() - started
    assert not failures, "\n\n".join(failures)
    assert len(reached) == len(operations)
    assert elapsed < BUDGET_S, f"the fuzz pass took {elapsed:.0f} s"


def test_the_document_names_every_route_with_its_bodies_and_errors(fuzz_gateway: GatewayProcess) -> None:
    doc = httpx.get(f"{fuzz_gateway.root_url}/openapi.json").json()
    paths = doc["paths"]
    chat = paths["/v1/chat/completions"]["post"]
    body = chat["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ChatRequest"}
    schemas = doc["components"]["schemas"]
    assert {"model", "messages", "tools", "stream"} <= set(schemas["ChatRequest"]["properties"])
    assert schemas["ChatRequest"]["required"] == ["model"]
    assert set(chat["responses"]) >= {"200", "400", "401", "403", "404", "413", "429", "502", "503", "504"}
    assert set(chat["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    assert "ChatCompletionChunk" in schemas
    embeddings = paths["/v1/embeddings"]["post"]
    assert embeddings["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/EmbeddingRequest"
    )
    for path, item in paths.items():
        for method, operation in item.items():
            for status, answer in operation["responses"].items():
                if status.startswith(("4", "5")) and path != "/readyz":
                    ref = answer["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorBody"), (method, path, status)
    assert "HTTPValidationError" not in schemas
    assert set(paths["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    assert paths["/v1/models"]["get"]["security"] == [{"bearerAuth": []}]
    assert "security" not in paths["/healthz"]["get"]


def test_a_wrong_method_says_which_are_allowed(fuzz_gateway: GatewayProcess) -> None:
    with fuzz_gateway.http() as http:
        put = http.put("/admin/ml/x/monitor", headers=fuzz_gateway.auth())
        get = http.get("/v1/chat/completions", headers=fuzz_gateway.auth())
    assert put.status_code == 405 and put.headers["allow"] == "GET, POST"
    assert put.json()["error"]["code"] == "method_not_allowed"
    assert get.status_code == 405 and get.headers["allow"] == "POST"


def test_a_number_sent_as_a_string_is_refused_not_forwarded(fuzz_gateway: GatewayProcess) -> None:
    """Found by the fuzz pass: lax validation turned "0.5" into 0.5 for the check, then forwarded the
    string upstream."""
    with fuzz_gateway.http() as http:
        answer = http.post(
            "/v1/chat/completions",
            json={"model": "local", "messages": [{"role": "user", "content": "hi"}], "temperature": "0.5"},
            headers=fuzz_gateway.auth(),
        )
    assert answer.status_code == 422
    assert answer.json()["error"]["param"] == "temperature"
