"""Deployments whose upstream serves the Responses API natively (`responses: native`): a plain call is
passed to the upstream's own /responses and its answer comes back as it was (items the chat bridge would
not carry, such as reasoning, included) under the gateway's id, stored and logged like any response;
streams, previous_response_id, conversations and policy-rewritten input are bridged; deployments without
the option keep the bridge."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from sqlalchemy import text

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import FAST_GATEWAY_YAML, GatewayProcess, deployment
from tests.fakes.upstream import FakeUpstream, count_tokens
from tests.policy.conftest import make_key

POLICY = """\
rules:
  - name: redact
    match: {principals: [redactor]}
    checks:
      - {type: pii, mode: redact}
  - name: out-redact
    match: {principals: [out-redactor]}
    checks:
      - {type: deny_list, terms: [project falcon], mode: redact, apply_to: [output]}
"""


@pytest.fixture(scope="module")
def gw(
    project_factory: ProjectFactory, gateway_factory: GatewayFactory, fake_upstream: FakeUpstream
) -> Iterator[GatewayProcess]:
    routers: dict[str, Any] = {
        "native": {"deployments": [deployment("up", fake_upstream.url("ok-native"), responses="native")]},
        "bridged": {"deployments": [deployment("up", fake_upstream.url("ok-bridged"))]},
        "fallback": {
            "retries": 0,
            "deployments": [
                deployment("broken", fake_upstream.url("500-native"), responses="native"),
                deployment("spare", fake_upstream.url("ok-spare")),
            ],
        },
    }
    files = {"config/gateway.yaml": FAST_GATEWAY_YAML, "config/policies.yaml": POLICY}
    project = project_factory(routers=routers, files=files)
    with gateway_factory(project) as gateway:
        yield gateway


def strict(gw: GatewayProcess) -> openai.OpenAI:
    return gw.client(_strict_response_validation=True)


def endpoints(upstream: FakeUpstream, mode: str, since: int) -> list[str]:
    return [h["endpoint"] for h in upstream.hits(mode)[since:]]


def test_a_native_deployment_gets_the_responses_body_and_its_answer_passes_through(
    gw: GatewayProcess, fake_upstream: FakeUpstream
) -> None:
    client = strict(gw)
    before = fake_upstream.count("ok-native")
    raw = client.responses.with_raw_response.create(
        model="native",
        input="What is opsgate?",
        instructions="Answer briefly.",
        reasoning={"effort": "low"},
        max_output_tokens=40,
        metadata={"case": "native"},
        extra_body={"opsgate": {"include_context": False}},
    )
    made = raw.parse()
    hit = fake_upstream.hits("ok-native")[-1]
    assert endpoints(fake_upstream, "ok-native", before) == ["responses"]
    sent = hit["json"]
    assert sent["input"] == "What is opsgate?" and sent["instructions"] == "Answer briefly."
    assert sent["reasoning"] == {"effort": "low"} and sent["max_output_tokens"] == 40
    assert sent["model"] == "fake" and sent["store"] is False and "opsgate" not in sent
    assert made.id == "resp_" + raw.headers["x-opsgate-request-id"].removeprefix("req_")
    assert made.model == "native" and made.metadata == {"case": "native"} and made.store is True
    assert [item.type for item in made.output] == ["reasoning", "message"]  # the bridge has no reasoning item
    assert made.output_text == "echo: What is opsgate?" and made.service_tier == "default"
    assert made.usage is not None and made.usage.output_tokens_details.reasoning_tokens == 5
    assert made.usage.output_tokens == count_tokens("echo: What is opsgate?")
    assert client.responses.retrieve(made.id).model_dump() == made.model_dump()  # stored as answered
    row = gw.log_row(raw.headers["x-opsgate-request-id"])
    assert row["status"] == 200 and row["deployment"] == "up"
    assert row["tokens_out"] == made.usage.output_tokens
    assert raw.headers["x-opsgate-versions"].startswith("router:native@1#")


def test_what_needs_the_bridge_is_bridged(gw: GatewayProcess, fake_upstream: FakeUpstream) -> None:
    client = strict(gw)
    before = fake_upstream.count("ok-native")
    first = client.responses.create(model="native", input="first turn")
    events = list(client.responses.create(model="native", input="streamed", stream=True))
    assert events[-1].type == "response.completed"
    follow = client.responses.create(model="native", input="second turn", previous_response_id=first.id)
    conv = client.conversations.create()
    in_conv = client.responses.create(model="native", input="in a conversation", conversation=conv.id)
    assert endpoints(fake_upstream, "ok-native", before) == [
        "responses",
        "chat/completions",
        "chat/completions",
        "chat/completions",
    ]
    sent = fake_upstream.hits("ok-native")[-2]["json"]["messages"]
    assert sent[0] == {"role": "user", "content": "first turn"}  # previous turn rebuilt by the gateway
    assert sent[1]["role"] == "assistant" and sent[1]["content"] == "echo: first turn"
    assert follow.output_text == "echo: second turn" and in_conv.output_text == "echo: in a conversation"


def test_other_deployments_keep_the_bridge_and_a_failed_native_one_falls_back(
    gw: GatewayProcess, fake_upstream: FakeUpstream
) -> None:
    client = strict(gw)
    before = fake_upstream.count("ok-bridged")
    bridged = client.responses.create(model="bridged", input="hello")
    assert endpoints(fake_upstream, "ok-bridged", before) == ["chat/completions"]
    assert [item.type for item in bridged.output] == ["message"]
    raw = client.responses.with_raw_response.create(model="fallback", input="fall back")
    assert fake_upstream.hits("500-native")[-1]["endpoint"] == "responses"
    assert fake_upstream.hits("ok-spare")[-1]["endpoint"] == "chat/completions"
    assert raw.parse().output_text == "echo: fall back"
    row = gw.log_row(raw.headers["x-opsgate-request-id"])
    assert row["deployment"] == "spare"


def test_chat_completions_on_a_native_router_stay_chat(
    gw: GatewayProcess, fake_upstream: FakeUpstream
) -> None:
    before = fake_upstream.count("ok-native")
    done = strict(gw).chat.completions.create(model="native", messages=[{"role": "user", "content": "chat"}])
    assert done.choices[0].message.content == "echo: chat"
    assert endpoints(fake_upstream, "ok-native", before) == ["chat/completions"]


def test_policies_that_rewrite_the_call_keep_their_word(
    gw: GatewayProcess, fake_upstream: FakeUpstream
) -> None:
    """Input redaction must reach the upstream (so the call is bridged with the redacted messages); output
    redaction must reach the caller (the native answer is not passed through unredacted)."""
    redactor = gw.client(api_key=make_key(gw, "redactor"), _strict_response_validation=True)
    before = fake_upstream.count("ok-native")
    answer = redactor.responses.create(model="native", input="mail me at jane.doe@example.org")
    hit = fake_upstream.hits("ok-native")[-1]
    assert endpoints(fake_upstream, "ok-native", before) == ["chat/completions"]
    assert "jane.doe@example.org" not in str(hit["json"]) and "jane.doe" not in answer.output_text
    out = gw.client(api_key=make_key(gw, "out-redactor"), _strict_response_validation=True)
    said = out.responses.create(model="native", input="tell me about project falcon")
    assert fake_upstream.hits("ok-native")[-1]["endpoint"] == "responses"
    assert "project falcon" not in said.model_dump_json()
    with gw._db().connect() as conn:
        stored = conn.execute(
            text("select payload from traffic_calls where id = :i"), {"i": said.id}
        ).scalar()
    assert stored is not None and "echo: tell me about" in str(stored)
    assert (
        "about project falcon" not in str(stored).split('"request"')[0]
    )  # the answer as checked, not as sent
