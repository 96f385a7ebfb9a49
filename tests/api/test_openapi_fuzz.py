"""`/openapi.json` tells the truth: a schemathesis pass against the real server, driven by the published
schema alone, reaches every operation with valid and invalid bodies, and every answer conforms (status
documented, body and headers as the schema says, no 5xx, invalid data refused, a missing key a 401, a
wrong method a 405 with `Allow`).

Bounded by construction, not by a clock: a fixed seed, derandomized generation, no shrinking and
MAX_EXAMPLES per operation and mode (about a minute for the whole pass on 2 cores; it prints its time).
Model names and the `{name}` of classic-model paths are steered to what the gateway serves for half the
requests (deterministically), so valid requests also reach the upstream call and the model instead of
stopping at 404.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import negative_data_rejection, positive_data_acceptance

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import GatewayProcess, commit_project, deployment
from tests.fakes.upstream import FakeUpstream

SEED = 20261205
MAX_EXAMPLES = 15
ROUTERS = ("local", "fake")
ML_MODEL = "income"


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
    gateway_yaml = (
        "server:\n  max_body_bytes: 65536\nrequest_log:\n  flush_interval_s: 0.02\n"
        "ml:\n  warm_explanations: false\n"
    )
    project = project_factory(routers=routers, files={"config/gateway.yaml": gateway_yaml})
    _add_model(project)
    commit_project(project, "a classic model")
    with gateway_factory(project) as gateway:
        yield gateway


def _add_model(root: Path) -> None:
    """A classic model, so /v1/ml/* and /admin/ml/* get past 404: a logistic regression on two numeric
    columns, trained on 200 synthetic rows (no data file needed)."""
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    from gateway.ml import register

    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"income": rng.uniform(10, 100, 200), "age": rng.uniform(18, 90, 200)})
    frame["target"] = (frame["income"] > 50).astype(int)
    model = LogisticRegression().fit(frame[["income", "age"]], frame["target"])
    schema = {"income": {"type": "number", "min": 0}, "age": {"type": "number", "min": 0, "max": 130}}
    register(model, ML_MODEL, schema, frame, project_dir=root, target="target")


def _steer_model(case: schemathesis.Case) -> schemathesis.Case:
    """Half the bodies (by a hash of the generated name: deterministic) name a router that exists. Only a
    non-empty string is replaced, by another non-empty string: a body stays valid or invalid as it was.
    A valid chat body gets a message when it has none: `messages` may be left out only when the model is
    a prompt that supplies them, which a schema cannot say (without one the answer is a 422)."""
    name = (case.path_parameters or {}).get("name")
    if isinstance(name, str) and name and zlib.crc32(name.encode("utf-8", "surrogatepass")) % 2 == 0:
        case.path_parameters = {**(case.path_parameters or {}), "name": ML_MODEL}
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


# Rows are checked against each classic model's own input schema (GET /v1/ml/{name} publishes it; the API
# document cannot hold every model's), and a CSV body is text whose validity no JSON schema can state: a
# schema-valid request there may be refused (422 data_quality, invalid_csv) by design. Every other check
# (no 5xx, documented status, conforming body and headers, invalid data refused) still applies to them.
MODEL_SPECIFIC = {"/v1/ml/{name}/predict", "/v1/ml/{name}/invocations", "/v1/ml/{name}/feedback"}


def _fuzz(operation: Any, mode: GenerationMode, headers: dict[str, str]) -> None:
    strategy = operation.as_strategy(generation_mode=mode).map(_steer_model)
    excluded = [positive_data_acceptance] if operation.path in MODEL_SPECIFIC else []
    if mode == GenerationMode.NEGATIVE and not operation.body:
        # "invalid" values of free-form string query parameters (an array, an object) are plain strings
        # once serialized into a URL, so the server cannot tell them apart from valid ones; refusal of
        # invalid data is checked on bodies and path parameters. No 5xx and conforming answers still apply.
        excluded.append(negative_data_rejection)

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
        # a first global-importance computation (SHAP, cold) takes long on a loaded machine
        case.call_and_validate(headers=headers, timeout=120, excluded_checks=excluded)

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
            except hypothesis.errors.Unsatisfiable:
                # nothing to make invalid (e.g. a string path parameter alone: any string is one)
                if mode != GenerationMode.NEGATIVE:
                    raise
            except (
                Exception,
                BaseExceptionGroup,
            ) as exc:  # a check failed: keep it, go on with the other operations
                inner = "; ".join(repr(e)[:2000] for e in getattr(exc, "exceptions", ()))
                failures.append(f"{operation.label} [{mode.value}]: {exc} {inner}")
            reached.add(operation.label)
    print(f"fuzzed {len(operations)} operations in {time.monotonic() - started:.0f} s")
    assert not failures, "\n\n".join(failures)
    assert len(reached) == len(operations)


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
                if (
                    status.startswith(("4", "5"))
                    and path != "/readyz"
                    and not path.startswith("/v1/messages")
                ):
                    ref = answer["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorBody"), (method, path, status)
    assert "HTTPValidationError" not in schemas
    assert set(paths["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    assert paths["/v1/models"]["get"]["security"] == [{"bearerAuth": []}]
    assert "security" not in paths["/healthz"]["get"]


def test_a_wrong_method_says_which_are_allowed(fuzz_gateway: GatewayProcess) -> None:
    with fuzz_gateway.http() as http:
        put = http.put("/admin/ml/x/monitor", headers=fuzz_gateway.auth())
        get = http.get("/v1/embeddings", headers=fuzz_gateway.auth())
        patch = http.patch("/v1/chat/completions", headers=fuzz_gateway.auth())
    assert put.status_code == 405 and put.headers["allow"] == "GET, POST"
    assert patch.status_code == 405 and patch.headers["allow"] == "GET, POST"
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
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "temperature"
    assert answer.json()["error"]["code"] == "invalid_type"


def test_a_whole_float_is_an_integer(fuzz_gateway: GatewayProcess) -> None:
    with fuzz_gateway.http() as http:
        answer = http.post(
            "/v1/chat/completions",
            json={"model": "local", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16.0},
            headers=fuzz_gateway.auth(),
        )
    assert answer.status_code == 200, answer.text


def test_a_diff_of_refs_without_kind_is_a_400_not_a_500(fuzz_gateway: GatewayProcess) -> None:
    """Found by the fuzz pass: GET /admin/diff?a=x&b=y failed an assertion (500)."""
    with fuzz_gateway.http() as http:
        answer = http.get("/admin/diff", params={"a": "local", "b": "fake"}, headers=fuzz_gateway.auth())
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "invalid_reference"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/admin/sync", {"allow_dirty": 0}, "allow_dirty"),
        ("/admin/rollback", {"ref": "router:local", "to_version": "1", "reason": "r"}, "to_version"),
        (
            "/admin/rollback",
            {"ref": "router:local", "to_version": 1, "reason": "r", "emergency": "yes"},
            "emergency",
        ),
    ],
)
def test_admin_bodies_are_not_coerced(
    fuzz_gateway: GatewayProcess, path: str, body: dict[str, Any], param: str
) -> None:
    """Found by the fuzz pass: `"emergency": "yes"` was an emergency rollback, `0` a false."""
    with fuzz_gateway.http() as http:
        answer = http.post(path, json=body, headers=fuzz_gateway.auth())
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["param"] == param


@pytest.mark.parametrize(
    ("path", "method", "shape", "streams"),
    [
        ("/v1/completions", "post", "TextCompletion", True),
        ("/v1/responses", "post", "ResponseObject", True),
        ("/v1/messages", "post", "AnthropicMessage", True),
        ("/v1/messages/count_tokens", "post", "TokenCount", False),
        ("/v1/responses/{response_id}", "get", "ResponseObject", False),
        ("/v1/responses/{response_id}", "delete", "Deleted", False),
        ("/v1/responses/{response_id}/input_items", "get", "ItemList", False),
        ("/v1/conversations", "post", "Conversation", False),
        ("/v1/conversations/{conversation_id}", "get", "Conversation", False),
        ("/v1/conversations/{conversation_id}", "delete", "Deleted", False),
        ("/v1/conversations/{conversation_id}/items", "get", "ItemList", False),
        ("/v1/conversations/{conversation_id}/items", "post", "ItemList", False),
    ],
)
def test_the_later_surfaces_publish_their_answers(
    fuzz_gateway: GatewayProcess, path: str, method: str, shape: str, streams: bool
) -> None:
    """The surfaces added after chat and embeddings say what they answer (not a bare object), so the fuzz
    pass checks their bodies too; the streaming ones say how they stream; the Anthropic surface's errors
    have Anthropic's shape."""
    doc = httpx.get(f"{fuzz_gateway.root_url}/openapi.json").json()
    operation = doc["paths"][path][method]
    ok = operation["responses"]["200"]["content"]
    assert ok["application/json"]["schema"] == {"$ref": f"#/components/schemas/{shape}"}
    assert ("text/event-stream" in ok) == streams
    assert shape in doc["components"]["schemas"]
    assert set(operation["responses"]) >= {"400", "401", "403", "404", "413", "429", "502", "503", "504"}
    error = "AnthropicErrorBody" if path.startswith("/v1/messages") else "ErrorBody"
    assert operation["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith(
        f"/{error}"
    )
    if method == "post" and path != "/v1/conversations":
        assert "requestBody" in operation
