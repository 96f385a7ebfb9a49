"""The bridged APIs on a RAG prompt artifact (`model: "kbqa"`): the prompt renders, retrieval runs, the
lineage names prompt, router and index, and citations come back (plain and streamed)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import FAST_GATEWAY_YAML, GatewayProcess, deployment
from tests.fakes.upstream import FakeUpstream
from tests.flow.test_chat_flow import KB_FILES, KB_INDEX, KBQA


@pytest.fixture(scope="module")
def gw(
    fake_upstream: FakeUpstream, project_factory: ProjectFactory, gateway_factory: GatewayFactory
) -> Iterator[GatewayProcess]:
    routers: dict[str, Any] = {
        "echo": {"deployments": [deployment("up", fake_upstream.url("ok"))]},
        "vectors": {"kind": "embedding", "deployments": [deployment("up", fake_upstream.url("ok"))]},
    }
    files = {
        "config/gateway.yaml": FAST_GATEWAY_YAML,
        "prompts/kbqa.yaml": KBQA,
        "config/indexes/kb.yaml": KB_INDEX,
        **KB_FILES,
    }
    with gateway_factory(project_factory(routers, files=files)) as gateway:
        yield gateway


def test_responses_on_a_prompt_with_citations(gw: GatewayProcess) -> None:
    client = gw.client(_strict_response_validation=True)
    raw = client.responses.with_raw_response.create(model="kbqa", input="When do orders ship?")
    made = raw.parse()
    kinds = [v.split(":")[0] for v in raw.headers["x-opsgate-versions"].split(",")]
    assert kinds == ["prompt", "router", "index"]
    citations = made.model_extra["citations"]  # type: ignore[index]
    assert citations and all(c["chunk_id"] for c in citations)
    events = list(client.responses.create(model="kbqa", input="When do orders ship?", stream=True))
    completed = events[-1].response  # type: ignore[union-attr]
    assert events[-1].type == "response.completed"
    assert [c["chunk_id"] for c in completed.model_extra["citations"]] == [c["chunk_id"] for c in citations]  # type: ignore[index]
    assert completed.output_text == made.output_text == "echo: When do orders ship?"


def test_completions_and_messages_on_a_prompt(gw: GatewayProcess) -> None:
    import anthropic
    import httpx2

    done = gw.client().completions.create(model="kbqa", prompt="When do orders ship?")
    assert done.choices[0].text == "echo: When do orders ship?" and done.model_extra["citations"]  # type: ignore[index]
    claude = anthropic.Anthropic(
        api_key=gw.admin_key, base_url=gw.root_url, max_retries=0, http_client=httpx2.Client(trust_env=False)
    )
    raw = claude.messages.with_raw_response.create(
        model="kbqa", max_tokens=32, messages=[{"role": "user", "content": "When do orders ship?"}]
    )
    assert raw.headers["x-opsgate-versions"].startswith("prompt:kbqa@1#")
    assert raw.parse().content[0].text == "echo: When do orders ship?"  # type: ignore[union-attr]
