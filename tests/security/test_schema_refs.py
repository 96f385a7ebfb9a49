"""Attack: a JSON Schema names a host with `$ref` (`http://attacker/schema.json`, an internal service, the
cloud metadata address), and the gateway fetches it, off the operator's egress list.

jsonschema still retrieves http(s) references with urllib by default (deprecated). Before the fix, a
prompt's variables schema (an author's file, synced without complaint) made the gateway GET the
attacker's URL on every request to the prompt, and so did a caller's `response_format` schema wherever
the `json_output` policy checks answers (any app key: a GET to any host, its answer used as a schema).
Every validator opsgate builds now resolves references within its own schema only
(gateway/egress/schemas.py); `opsgate sync` refuses a prompt whose schema refers outside itself, at its
line, and a version registered before gets a 400 naming the prompt.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from aiohttp import web

from gateway.prompts.spec import PromptSpec
from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import GatewayProcess, assert_error
from tests.fakes.upstream import FakeUpstream, Hit, chat_answer, json_response
from tests.security.egress_fakes import (
    CANARY_ENV,
    MESSAGES,
    Listener,
    assert_no_leak,
    attacker,
    fake_anthropic,
    gateway_yaml,
    git_commit_all,
    line_of,
    register_unchecked,
    routers,
    sync,
)

__all__ = ["attacker", "fake_anthropic"]  # fixtures


@pytest.fixture(scope="module")
def gw(
    project_factory: ProjectFactory,
    gateway_factory: GatewayFactory,
    fake_upstream: FakeUpstream,
    fake_anthropic: Listener,
) -> Iterator[GatewayProcess]:
    config = gateway_yaml(fake_anthropic, fake_upstream)
    fake_upstream.add_mode("jsonanswer", _json_answer)
    found = routers(fake_anthropic, fake_upstream)
    found["jsonish"] = {
        "deployments": [{"id": "j", "model": "openai/fake", "api_base": fake_upstream.url("jsonanswer")}]
    }
    policies = "rules:\n  - name: json\n    checks:\n      - {type: json_output, mode: block}\n"
    files = {"config/gateway.yaml": config, "config/policies.yaml": policies}
    project = project_factory(routers=found, files=files)
    git_commit_all(project, "project")
    with gateway_factory(project, env=CANARY_ENV) as gateway:
        yield gateway


async def _json_answer(hit: Hit) -> web.StreamResponse:
    return json_response(chat_answer(hit.body, '{"a": 1}'))


def prompt(name: str, ref: str) -> str:
    return (
        f"name: {name}\nrouter: direct\nmessages:\n  - {{role: system, content: 'Hi {{{{ who }}}}'}}\n"
        "variables:\n  type: object\n  properties:\n"
        f"    who: {{$ref: '{ref}'}}\n"
    )


def test_sync_refuses_a_schema_reference_that_leaves_the_schema(
    gw: GatewayProcess, attacker: Listener
) -> None:
    refs = {
        "ref_file": "file:///etc/passwd",
        "ref_host": attacker.url + "/schema.json",
        "ref_doc": "other.json",
    }
    files = {f"prompts/{name}.yaml": prompt(name, ref) for name, ref in refs.items()}
    done = sync(gw, files, "prompts with remote schemas")
    try:
        assert done.returncode == 1, done.stdout + done.stderr
        for name, ref in refs.items():
            line = line_of(files[f"prompts/{name}.yaml"], "variables:") + 1  # the mapping's first line
            expected = f"prompts/{name}.yaml:{line}: variables: properties.who.$ref: {ref!r} points outside"
            assert expected in done.stderr, done.stderr
            assert f"prompt:{name}" not in done.stdout
    finally:
        sync(gw, dict.fromkeys(files, ""), "remove them")
    assert attacker.received == []


def test_a_version_registered_before_gets_a_400(gw: GatewayProcess, attacker: Listener) -> None:
    valid = PromptSpec.model_validate(
        {"name": "old_ref", "router": "direct", "messages": [{"role": "system", "content": "Hi {{ who }}"}]}
    )
    schema = {"type": "object", "properties": {"who": {"$ref": attacker.url + "/schema.json"}}}
    register_unchecked(gw, "prompt", valid.model_copy(update={"variables": schema}))
    r = _answer(gw, "old_ref")
    assert_error(gw, r, 400, type_="invalid_request_error", code="invalid_prompt", param="model")
    assert "refers outside itself" in r.json()["error"]["message"]
    assert_no_leak(gw, attacker, r.text)


def test_a_callers_response_format_schema_is_never_fetched(gw: GatewayProcess, attacker: Listener) -> None:
    made = gw.cli("keys", "create", "--name", "caller", "--role", "app", key=gw.admin_key)
    key = made.stdout.strip().splitlines()[-1]
    gw.wait_for_key(key)
    schema = {"type": "object", "properties": {"a": {"$ref": attacker.url + "/metadata.json"}}}
    body = {
        "model": "jsonish",
        "messages": MESSAGES,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    }
    with gw.http() as http:
        r = http.post("/v1/chat/completions", json=body, headers=gw.auth(key))
    assert r.status_code == 200, r.text  # not judged (and not fetched): the answer is passed on
    assert_no_leak(gw, attacker, r.text)


def _answer(gw: GatewayProcess, model: str) -> httpx.Response:
    import time

    deadline = time.monotonic() + 10
    while True:
        with gw.http() as http:
            r = http.post(
                "/v1/chat/completions",
                json={"model": model, "messages": MESSAGES, "prompt_variables": {"who": "you"}},
                headers=gw.auth(),
            )
        if r.status_code != 404 or time.monotonic() > deadline:
            return r
        time.sleep(0.1)
