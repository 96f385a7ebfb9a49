"""Bad requests and upstream failures: exact status, OpenAI error JSON, never a traceback, one log row each.

Also the config errors that stop `opsgate serve` from starting (exit 2, naming file, line and field).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ProjectFactory
from tests.fakes.gateway import (
    OPSGATE,
    SPINE_MAX_BODY,
    GatewayProcess,
    assert_error,
    free_port,
    subprocess_env,
)

MAX_BODY = SPINE_MAX_BODY
MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def gw(spine_gateway: GatewayProcess) -> GatewayProcess:
    return spine_gateway  # its body limit is SPINE_MAX_BODY; it has the local router `other`


def post(gw: GatewayProcess, content: Any = None, *, key: str | None = "admin", **kw: Any) -> httpx.Response:
    headers = dict(kw.pop("headers", {}))
    if key is not None:
        headers.update(gw.auth(None if key == "admin" else key))
    path = kw.pop("path", "/v1/chat/completions")
    with gw.http() as http:
        if content is None:
            return http.post(path, headers=headers, **kw)
        if not isinstance(content, (dict, list)):
            headers.setdefault("Content-Type", "application/json")
            return http.post(path, content=content, headers=headers, **kw)
        return http.post(path, json=content, headers=headers, **kw)


# -- bad requests ------------------------------------------------------------------------------------------


def test_malformed_json_is_400(gw: GatewayProcess) -> None:
    r = post(gw, b'{"model": "default", "messages": [')
    row = assert_error(gw, r, 400, type_="invalid_request_error", code="invalid_json")
    assert "not valid JSON" in r.json()["error"]["message"]
    assert row["principal"] == "bootstrap-admin"
    assert row["key_id"] is not None


def test_empty_body_is_400(gw: GatewayProcess) -> None:
    assert_error(gw, post(gw, b""), 400, type_="invalid_request_error", code="invalid_json")


def test_invalid_utf8_is_400(gw: GatewayProcess) -> None:
    body = b'{"model": "default", "messages": [{"role": "user", "content": "caf\xe9 \xff"}]}'
    r = post(gw, body)
    assert_error(gw, r, 400, type_="invalid_request_error", code="invalid_json")
    assert "UTF-8" in r.json()["error"]["message"]


def test_a_json_array_is_400(gw: GatewayProcess) -> None:
    assert_error(gw, post(gw, b"[1, 2]"), 400, type_="invalid_request_error", code="invalid_body")


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"model": "default", "messages": "hello"}, "messages", "invalid_type"),
        ({"model": "default", "messages": MESSAGES, "max_tokens": "many"}, "max_tokens", "invalid_type"),
        (
            {"model": "default", "messages": MESSAGES, "max_tokens": 0},
            "max_tokens",
            "integer_below_min_value",
        ),
        (
            {"model": "default", "messages": MESSAGES, "temperature": 7},
            "temperature",
            "decimal_above_max_value",
        ),
        ({"model": "default", "messages": MESSAGES, "stream": "yes please"}, "stream", "invalid_type"),
        (
            {
                "model": "default",
                "messages": MESSAGES,
                "stream": True,
                "stream_options": {"include_usage": []},
            },
            "stream_options.include_usage",
            "invalid_type",
        ),
        (
            {"model": "default", "messages": [{"role": "robot", "content": "hi"}]},
            "messages.0.role",
            "invalid_value",
        ),
        (
            {"model": "default", "messages": [{"role": "user", "content": 42}]},
            "messages.0.content",
            "invalid_type",
        ),
        ({"model": 12, "messages": MESSAGES}, "model", "invalid_type"),
        ({"model": "default", "messages": []}, "messages", "empty_array"),
    ],
    ids=[
        "messages-str",
        "max_tokens-str",
        "max_tokens-0",
        "temperature",
        "stream",
        "stream_options",
        "role",
        "content",
        "model-int",
        "messages-empty",
    ],
)
def test_wrong_types_are_400_naming_the_field(
    gw: GatewayProcess, body: dict[str, Any], param: str, code: str
) -> None:
    r = post(gw, body)
    assert_error(gw, r, 400, type_="invalid_request_error", code=code, param=param)
    assert r.json()["error"]["message"].startswith(f"{param}: ")


@pytest.mark.parametrize("field", ["messages", "model"])
def test_missing_fields_are_400(gw: GatewayProcess, field: str) -> None:
    body = {"model": "default", "messages": MESSAGES}
    del body[field]
    r = post(gw, body)
    assert_error(gw, r, 400, type_="invalid_request_error", code="missing_required_parameter", param=field)
    assert r.json()["error"]["message"].startswith(f"{field}: this field is required")


def test_embeddings_wrong_input_is_400(gw: GatewayProcess) -> None:
    r = post(gw, {"model": "minilm", "input": 42}, path="/v1/embeddings")
    assert_error(gw, r, 400, type_="invalid_request_error", code="invalid_type", param="input")


@pytest.mark.parametrize("model", ["gpt-17", "openai/gpt-4o", "prompt:nothing@production", "a b"])
def test_unknown_model_is_404(gw: GatewayProcess, model: str) -> None:
    r = post(gw, {"model": model, "messages": MESSAGES})
    row = assert_error(gw, r, 404, type_="invalid_request_error", code="model_not_found", param="model")
    assert model.split("@", 1)[0] in r.json()["error"]["message"]
    assert row["model"] == model
    assert row["artifacts"] == []


def test_the_openai_client_sees_the_same_errors(gw: GatewayProcess) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        gw.client().chat.completions.create(model="gpt-17", messages=MESSAGES)  # type: ignore[arg-type]
    assert not_found.value.status_code == 404
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.AuthenticationError):
        gw.client(api_key="sk-wrong-wrong-wrong").chat.completions.create(model="default", messages=MESSAGES)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError) as invalid:
        gw.client().chat.completions.create(model="default", messages=MESSAGES, max_tokens=-1)  # type: ignore[arg-type]
    assert invalid.value.body["param"] == "max_tokens"  # type: ignore[index]


# -- keys ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer sk-og-not-a-real-key"},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer"},
    ],
    ids=["none", "unknown", "basic", "empty"],
)
def test_no_or_bad_key_is_401(gw: GatewayProcess, headers: dict[str, str]) -> None:
    r = post(gw, {"model": "default", "messages": MESSAGES}, key=None, headers=headers)
    row = assert_error(gw, r, 401, type_="authentication_error", code="invalid_api_key")
    assert row["key_id"] is None
    assert row["principal"] is None


def test_key_not_allowed_for_the_router_is_403(gw: GatewayProcess) -> None:
    key = gw.cli(
        "keys", "create", "--name", "only-other", "--role", "app", "--allow", "router:other", key=gw.admin_key
    ).stdout
    key = key.strip().splitlines()[-1]
    gw.wait_for_key(key)
    r = post(gw, {"model": "default", "messages": MESSAGES}, key=key)
    row = assert_error(gw, r, 403, type_="permission_error", code="permission_denied", param="model")
    assert row["principal"] == "only-other"
    assert "router:default" in r.json()["error"]["message"]
    ok = post(gw, {"model": "other", "messages": MESSAGES}, key=key)
    assert ok.status_code == 200
    with gw.http() as http:
        listed = http.get("/v1/models", headers=gw.auth(key)).json()["data"]
        hidden = http.get("/v1/models/default", headers=gw.auth(key))
    assert [m["id"] for m in listed] == ["other"]
    assert hidden.status_code == 404


# -- body size ---------------------------------------------------------------------------------------------


def _huge_body() -> bytes:
    filler = "x" * (MAX_BODY + 1024)
    return b'{"model": "default", "messages": [{"role": "user", "content": "' + filler.encode() + b'"}]}'


def test_huge_body_with_content_length_is_413(gw: GatewayProcess) -> None:
    r = post(gw, _huge_body())
    assert_error(gw, r, 413, type_="invalid_request_error", code="body_too_large")
    assert str(MAX_BODY) in r.json()["error"]["message"]


def test_huge_chunked_body_is_413(gw: GatewayProcess) -> None:
    body = _huge_body()

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 8192):
            yield body[i : i + 8192]

    r = post(gw, chunks(), headers={"Content-Type": "application/json"})
    assert "content-length" not in r.request.headers
    assert r.request.headers["transfer-encoding"] == "chunked"
    assert_error(gw, r, 413, type_="invalid_request_error", code="body_too_large")


def test_a_body_just_under_the_limit_is_served(gw: GatewayProcess) -> None:
    content = "y" * (MAX_BODY - 200)
    r = post(gw, {"model": "default", "messages": [{"role": "user", "content": content}]})
    assert r.status_code == 200


# -- unknown URLs ------------------------------------------------------------------------------------------


def test_unknown_url_and_method_are_openai_errors(gw: GatewayProcess) -> None:
    with gw.http() as http:
        missing = http.get("/v1/nothing-here", headers=gw.auth())
        wrong_method = http.put("/v1/chat/completions", headers=gw.auth())  # GET lists stored completions
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "unknown_url"
    assert wrong_method.status_code == 405
    assert set(wrong_method.json()["error"]) == {"message", "type", "param", "code"}


# -- config errors stop the server -------------------------------------------------------------------------

BAD_ROUTER = """\
name: x
strategy: {type: fallback}
deployments:
  - id: local
    model: local/extractive
  - id: other
    model: openai/gpt-4o-mini
    timout_s: 5
"""
LITERAL_KEY = "name: x\ndeployments:\n  - id: a\n    model: openai/gpt-4o-mini\n    api_key: sk-live-123456\n"
BAD_PROJECTS: dict[str, dict[str, Any]] = {
    "unknown-field": {"routers": {"x": BAD_ROUTER}},
    "literal-key": {"routers": {"x": LITERAL_KEY}},
    "gateway-yaml": {"files": {"config/gateway.yaml": "server:\n  host: 127.0.0.1\n  prot: 9\n"}},
    "invalid-yaml": {"routers": {"x": "name: x\ndeployments: [\n"}},
    "name-mismatch": {"routers": {"x": "name: y\ndeployments:\n  - {id: a, model: local/extractive}\n"}},
    "bad-prompt": {"files": {"prompts/p.yaml": "name: p\nrouter: default\nmesages: []\n"}},
    "bad-policy": {
        "files": {"config/policies.yaml": "rules:\n  - name: r\n    checks:\n      - {type: nope}\n"}
    },
}


@pytest.fixture(scope="module")
def refusals(
    project_factory: ProjectFactory, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[int, str]]:
    """`opsgate serve` on each bad project, all at once: (exit code, stderr)."""
    running = {}
    for case, spec in BAD_PROJECTS.items():
        project = project_factory(**spec)
        data = tmp_path_factory.mktemp("refused")
        env = subprocess_env({"OPSGATE_PROJECT_DIR": str(project), "OPSGATE_DATA_DIR": str(data)})
        running[case] = (
            subprocess.Popen(
                [OPSGATE, "serve", "--host", "127.0.0.1", "--port", str(free_port())],
                cwd=project,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
            data,
        )
    results = {}
    for case, (process, data) in running.items():
        _, stderr = process.communicate(timeout=90)
        assert not (data / "opsgate.db").exists(), f"{case}: a refused start must not touch the database"
        results[case] = (process.returncode, stderr)
    return results


def test_unknown_router_field_refuses_to_start(refusals: dict[str, tuple[int, str]]) -> None:
    code, stderr = refusals["unknown-field"]
    assert code == 2, stderr
    assert "config/routers/x.yaml:8: deployments.1.timout_s: unknown field" in stderr
    assert "Traceback" not in stderr


def test_literal_api_key_in_a_router_file_is_refused(refusals: dict[str, tuple[int, str]]) -> None:
    code, stderr = refusals["literal-key"]
    assert code == 2, stderr
    assert "config/routers/x.yaml:3: deployments.0: " in stderr  # the deployment holding the key
    assert "api_key is not allowed" in stderr
    assert "api_key_env" in stderr
    assert "sk-live-123456" not in stderr


def test_unknown_gateway_yaml_field_refuses_to_start(refusals: dict[str, tuple[int, str]]) -> None:
    code, stderr = refusals["gateway-yaml"]
    assert code == 2, stderr
    assert "config/gateway.yaml:3: server.prot: unknown field" in stderr


def test_invalid_yaml_refuses_to_start(refusals: dict[str, tuple[int, str]]) -> None:
    code, stderr = refusals["invalid-yaml"]
    assert code == 2, stderr
    assert "config/routers/x.yaml:" in stderr
    assert "invalid YAML" in stderr


def test_router_name_must_match_its_file(refusals: dict[str, tuple[int, str]]) -> None:
    code, stderr = refusals["name-mismatch"]
    assert code == 2, stderr
    assert "config/routers/x.yaml:1: name: 'y' must match the file name 'x'" in stderr


@pytest.mark.parametrize("case", ["bad-prompt", "bad-policy"])
def test_every_file_start_up_reads_is_checked_first(refusals: dict[str, tuple[int, str]], case: str) -> None:
    code, stderr = refusals[case]
    assert code == 2, stderr
    assert "Traceback" not in stderr
    where = "prompts/p.yaml:1: messages: " if case == "bad-prompt" else "config/policies.yaml:4: "
    assert where in stderr
