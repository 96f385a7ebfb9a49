"""The embedded local provider, called as an adapter (the same interface the router uses)."""

from __future__ import annotations

from typing import Any

import pytest
import tiktoken

from gateway.errors import UpstreamRejected
from gateway.providers.deployment import Deployment
from gateway.providers.extractive import NO_CONTEXT, NO_QUESTION, NOT_FOUND
from gateway.providers.local import LocalAdapter
from gateway.providers.minilm import MiniLMEmbedder

CHAT = Deployment(id="local", model="local/extractive")
CONTEXT = (
    "The warranty covers manufacturing defects for two years. "
    "Batteries are covered for six months. "
    "Water damage is never covered by the warranty."
)
RAG = (
    "Answer questions about the Aurora kettle using only this context, citing [ids].\n"
    "[kb-7] The Aurora kettle boils one litre in ninety seconds.\n"
    "[kb-9] Its base must be descaled every month with citric acid.\n"
    "[kb-12] The lid opens with a button on the handle.\n"
)


@pytest.fixture(scope="module")
def local() -> LocalAdapter:
    return LocalAdapter(MiniLMEmbedder())


def body(question: str | None, context: str | None = CONTEXT, **extra: Any) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    if context is not None:
        messages.append({"role": "system", "content": context})
    if question is not None:
        messages.append({"role": "user", "content": question})
    return {"messages": messages, **extra}


async def text_of(local: LocalAdapter, request: dict[str, Any]) -> tuple[str, str]:
    reply = await local.chat(CHAT, request)
    choice = reply["choices"][0]
    return choice["message"]["content"], choice["finish_reason"]


async def test_quotes_the_best_matching_sentence(local: LocalAdapter) -> None:
    assert await text_of(local, body("How long are batteries covered?")) == (
        '"Batteries are covered for six months."',
        "stop",
    )
    assert await text_of(local, body("Is water damage covered?")) == (
        '"Water damage is never covered by the warranty."',
        "stop",
    )


async def test_cites_passages_by_id_and_never_quotes_the_instructions(local: LocalAdapter) -> None:
    answer, _ = await text_of(local, body("How often must the base be descaled?", RAG))
    assert answer == '"Its base must be descaled every month with citric acid." [kb-9]'
    answer, _ = await text_of(local, body("How do I open the lid of the kettle?", RAG))
    assert answer.endswith("[kb-12]")
    assert "using only this context" not in answer


async def test_no_context_says_so_plainly(local: LocalAdapter) -> None:
    assert await text_of(local, body("What is the capital of France?", None)) == (NO_CONTEXT, "stop")
    assert "no context" in NO_CONTEXT.lower()


async def test_no_question_and_no_match(local: LocalAdapter) -> None:
    assert (await text_of(local, body(None)))[0] == NO_QUESTION
    assert (await text_of(local, body("Who painted the Mona Lisa?")))[0] == NOT_FOUND


async def test_developer_messages_and_content_parts_are_context(local: LocalAdapter) -> None:
    request = {
        "messages": [
            {"role": "developer", "content": [{"type": "text", "text": CONTEXT}]},
            {"role": "user", "content": [{"type": "text", "text": "How long are batteries covered?"}]},
        ]
    }
    assert (await text_of(local, request))[0] == '"Batteries are covered for six months."'


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_max_tokens_cuts_with_finish_reason_length(local: LocalAdapter, field: str) -> None:
    full, _ = await text_of(local, body("Is water damage covered?"))
    cut, finish = await text_of(local, body("Is water damage covered?", **{field: 4}))
    assert finish == "length"
    assert full.startswith(cut)
    assert len(tiktoken.get_encoding("cl100k_base").encode(cut)) == 4
    roomy, finish = await text_of(local, body("Is water damage covered?", **{field: 500}))
    assert (roomy, finish) == (full, "stop")


async def test_usage_counts_prompt_and_answer(local: LocalAdapter) -> None:
    enc = tiktoken.get_encoding("cl100k_base")
    request = body("How long are batteries covered?")
    reply = await local.chat(CHAT, request)
    answer = reply["choices"][0]["message"]["content"]
    prompt = 3 + sum(
        3 + len(enc.encode(m["role"])) + len(enc.encode(m["content"])) for m in request["messages"]
    )
    assert reply["usage"] == {
        "prompt_tokens": prompt,
        "completion_tokens": len(enc.encode(answer)),
        "total_tokens": prompt + len(enc.encode(answer)),
    }
    assert reply["model"] == "local/extractive"
    assert reply["object"] == "chat.completion"


async def test_deterministic(local: LocalAdapter) -> None:
    answers = {
        (await text_of(local, body("What does the warranty cover?", RAG + CONTEXT)))[0] for _ in range(5)
    }
    assert len(answers) == 1


async def test_stream_matches_the_plain_answer(local: LocalAdapter) -> None:
    request = body("Is water damage covered?")
    full = (await local.chat(CHAT, request))["choices"][0]["message"]["content"]
    chunks = [c async for c in local.chat_stream(CHAT, request)]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == full
    finishes = [
        c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]
    ]
    assert finishes == ["stop"]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == len(tiktoken.get_encoding("cl100k_base").encode(full))


async def test_stream_cut_by_max_tokens(local: LocalAdapter) -> None:
    chunks = [c async for c in local.chat_stream(CHAT, body("Is water damage covered?", max_tokens=3))]
    finishes = [
        c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]
    ]
    assert finishes == ["length"]


async def test_unknown_local_model_is_rejected_not_retried(local: LocalAdapter) -> None:
    with pytest.raises(UpstreamRejected) as exc:
        await local.chat(Deployment(id="x", model="local/gpt-9"), body("hi"))
    assert exc.value.retryable is False
    assert "local/extractive" in exc.value.message
    with pytest.raises(UpstreamRejected):
        await local.embed(Deployment(id="x", model="local/extractive"), {"input": "hi"})
