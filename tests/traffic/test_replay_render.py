"""`opsgate logs replay` rebuilds the rendered prompt byte for byte from the stored call and its lineage
(the prompt version, the stored variables, the retrieved chunks as the template saw them), on a real
gateway with a RAG prompt; a newer version (or `--to`) shows how its rendering differs; a stored call
that no longer matches what was sent is caught."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from sqlalchemy import text

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import FAST_GATEWAY_YAML, GatewayProcess, commit_project, deployment
from tests.fakes.upstream import FakeUpstream
from tests.flow.test_chat_flow import KB_FILES, KB_INDEX

# every field of a chunk the template can see, so the stored context must hold them all
KBQA = """\
name: kbqa
router: echo
retrieval: {index: kb, top_k: 2, mode: dense}
messages:
  - role: system
    content: |
      Answer {{ audience }} from this context ({{ context | length }} chunks).
      {% for c in context %}[{{ c.id }}] ({{ c.document_id }}, {{ c.source }}, {{ c.score }}, {{ c.index }}) {{ c.text }}
      {% endfor %}
"""


@pytest.fixture(scope="module")
def gw(
    project_factory: ProjectFactory, gateway_factory: GatewayFactory, fake_upstream: FakeUpstream
) -> Iterator[GatewayProcess]:
    routers: dict[str, Any] = {
        "echo": {"deployments": [deployment("up", fake_upstream.url("ok"))]},
        "vectors": {"kind": "embedding", "deployments": [deployment("up", fake_upstream.url("ok"))]},
    }
    files = {
        "config/gateway.yaml": FAST_GATEWAY_YAML + "traffic:\n  prompts: [kbqa]\n",
        "prompts/kbqa.yaml": KBQA,
        "config/indexes/kb.yaml": KB_INDEX,
        **KB_FILES,
    }
    with gateway_factory(project_factory(routers, files=files)) as gateway:
        yield gateway


def ask(gw: GatewayProcess, question: str, audience: str, *, stream: bool = False) -> str:
    raw = gw.client().chat.completions.with_raw_response.create(
        model="kbqa",
        messages=[{"role": "user", "content": question}],
        stream=stream,
        extra_body={"prompt_variables": {"audience": audience}},
    )
    if stream:
        for _ in raw.parse():
            pass
    else:
        raw.parse()
    request_id = raw.headers["x-opsgate-request-id"]
    gw.log_row(request_id)
    return request_id


def replay(gw: GatewayProcess, request_id: str, *args: str) -> dict[str, Any]:
    return dict(orjson.loads(gw.cli("logs", "replay", request_id, "--json", *args).stdout))


def sent_messages(fake_upstream: FakeUpstream) -> list[Any]:
    return list(fake_upstream.hits(endpoint="chat/completions")[-1]["json"]["messages"])


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_the_rendered_prompt_is_rebuilt_byte_equal(
    gw: GatewayProcess, fake_upstream: FakeUpstream, stream: bool
) -> None:
    request_id = ask(gw, "When do orders ship?", "a customer", stream=stream)
    sent = sent_messages(fake_upstream)
    report = replay(gw, request_id)
    rendered = report["rendered"]
    assert rendered["prompt"] == "prompt:kbqa@1"
    assert rendered["byte_equal"] is True and rendered["diff"] == []
    assert rendered["sha256"] == rendered["recorded_sha256"]
    assert orjson.dumps(rendered["messages"]) == orjson.dumps(sent)  # nothing to redact here: the same bytes
    assert ", kb/" in sent[0]["content"] and ", index:kb@1#" in sent[0]["content"]  # source, index
    assert rendered["chunk_ids"] == report["retrieved_chunk_ids"] and len(rendered["chunk_ids"]) == 2
    assert rendered["variables"] == {"audience": "a customer"}
    text_out = gw.cli("logs", "replay", request_id).stdout
    assert f"prompt:kbqa@1 re-renders byte-equal (sha256 {rendered['sha256']})" in text_out


def test_a_stored_call_that_no_longer_matches_is_caught(gw: GatewayProcess) -> None:
    request_id = ask(gw, "Who handles billing?", "an agent")
    with gw._db().begin() as conn:
        payload = orjson.loads(
            conn.execute(
                text("select payload from traffic_calls where request_id = :r"), {"r": request_id}
            ).scalar()
        )
        payload["request"]["prompt_variables"]["audience"] = "a robot"  # not what was rendered
        conn.execute(
            text("update traffic_calls set payload = :p where request_id = :r"),
            {"p": orjson.dumps(payload).decode(), "r": request_id},
        )
    rendered = replay(gw, request_id)["rendered"]
    assert rendered["byte_equal"] is False and rendered["equal_after_redaction"] is False
    assert "-    Answer an agent from this context (2 chunks)." in rendered["diff"]
    assert "+    Answer a robot from this context (2 chunks)." in rendered["diff"]
    assert "does NOT re-render what was sent" in gw.cli("logs", "replay", request_id).stdout


def test_a_newer_version_shows_what_it_would_render(gw: GatewayProcess) -> None:
    request_id = ask(gw, "When do orders ship?", "a customer")
    assert replay(gw, request_id)["rendered"]["moved"] is None  # nothing newer yet
    project = gw.project_dir
    (project / "prompts" / "kbqa.yaml").write_text(
        KBQA.replace("Answer {{ audience }} from", "Answer {{ audience }} briefly, only from"),
        encoding="utf-8",
    )
    commit_project(project, "kbqa briefly")
    gw.cli("sync", key=gw.admin_key)
    report = replay(gw, request_id)
    rendered = report["rendered"]
    assert rendered["byte_equal"] is True  # still rebuilt from the version that served it
    assert "prompt:kbqa@1: newest version is now @2" in report["moved_on"]
    moved = rendered["moved"]
    assert moved["prompt"] == "prompt:kbqa@2"
    assert "-    Answer a customer from this context (2 chunks)." in moved["diff"]
    assert "+    Answer a customer briefly, only from this context (2 chunks)." in moved["diff"]
    assert [line for line in moved["diff"] if line.startswith(("+[", "-["))] == []  # same chunks, same shape
    back = replay(gw, request_id, "--to", "prompt:kbqa@1")["rendered"]
    assert back["moved"] is None  # the version that served it: nothing to compare
    text_out = gw.cli("logs", "replay", request_id, "--to", "prompt:kbqa@2").stdout
    assert "rendered with prompt:kbqa@2:" in text_out and "briefly, only from" in text_out
