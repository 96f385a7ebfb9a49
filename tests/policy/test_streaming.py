"""Streamed output checks: however an answer is cut into chunks, what the caller receives equals the
whole answer checked at once, and no value is ever released in part."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.policy.checks.deny_list import DenyList, DenyListConfig
from gateway.policy.checks.pii import Pii, PiiConfig
from gateway.policy.pii import find_pii, placeholder, redact
from gateway.policy.streaming import StreamGuard

CANARIES = ["jane.doe.canary@example.org", "+44 20 7946 0958", "4111 1111 1111 1111", "203.0.113.42"]
ANSWER = (
    "Sure. Write to jane.doe.canary@example.org, or call +44 20 7946 0958 after nine. "
    "The card on file is 4111 1111 1111 1111 and the login came from 203.0.113.42. Done."
)


def chunk(text: str, index: int = 0, finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": index, "delta": {"content": text}, "finish_reason": finish}]}


def pieces(text: str, cuts: list[int]) -> list[str]:
    bounds = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def run(guard: StreamGuard, chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        async def rest() -> AsyncIterator[dict[str, Any]]:
            for c in chunks[1:]:
                yield c

        return [c async for c in guard.wrap(chunks[0], rest())]

    return asyncio.run(go())


def pii_guard(mode: str = "redact") -> tuple[StreamGuard, list[Any]]:
    check = Pii(PiiConfig(type="pii", mode=mode), "r")  # type: ignore[arg-type]
    done: list[Any] = []
    scanner = check.scanner(None)  # type: ignore[arg-type]
    assert scanner is not None
    return StreamGuard([(check, scanner)], done.append), done


def delivered(out: list[dict[str, Any]]) -> list[str]:
    return [c["choices"][0]["delta"].get("content") or "" for c in out if c.get("choices")]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(ANSWER)), max_size=40))
def test_any_chunking_releases_exactly_the_redacted_answer(cuts: list[int]) -> None:
    parts = pieces(ANSWER, cuts)
    chunks = [chunk(p) for p in parts[:-1]] + [chunk(parts[-1], finish="stop")]
    guard, _ = pii_guard()
    sent = delivered(run(guard, chunks))
    assert "".join(sent) == redact(ANSWER, find_pii(ANSWER), placeholder)
    for text in sent:
        for canary in CANARIES:
            # no piece carries a value, or even a 6-character fragment of one
            assert not any(canary[i : i + 6] in text for i in range(len(canary) - 5)), (text, canary)


def test_one_character_chunks_and_a_stream_that_ends_without_finish() -> None:
    guard, done = pii_guard()
    out = run(guard, [chunk(ch) for ch in ANSWER])
    assert "".join(delivered(out)) == redact(ANSWER, find_pii(ANSWER), placeholder)
    assert len(done) == 1
    ((_check, finding),) = guard.findings()
    assert (finding.verdict, finding.count, finding.matched) == ("redacted", 4, "card,email,ip,phone")


def test_flag_mode_passes_text_and_counts() -> None:
    guard, _ = pii_guard("flag")
    out = run(guard, [chunk(ANSWER[:50]), chunk(ANSWER[50:], finish="stop")])
    assert "".join(delivered(out)) == ANSWER
    assert guard.findings()[0][1].verdict == "flagged"


def test_block_mode_ends_the_answer_with_content_filter_before_the_value() -> None:
    check = DenyList(DenyListConfig(type="deny_list", terms=["project falcon"], mode="block"), "r")
    scanner = check.scanner(None)  # type: ignore[arg-type]
    assert scanner is not None
    guard = StreamGuard([(check, scanner)], lambda g: None)
    text = "The plan is called Project Fal" + "con and it ships in May."
    closed: list[bool] = []

    async def go() -> list[dict[str, Any]]:
        async def rest() -> AsyncIterator[dict[str, Any]]:
            try:
                yield chunk(text[30:])
                yield chunk(" more", finish="stop")
            finally:
                closed.append(True)

        return [c async for c in guard.wrap(chunk(text[:30]), rest())]

    out = asyncio.run(go())
    assert "".join(delivered(out)) == "The plan is called "
    assert out[-1]["choices"][0]["finish_reason"] == "content_filter"
    assert closed == [True]  # the upstream stream was closed, not read to the end
    assert guard.findings()[0][1].verdict == "blocked"


def test_choices_are_buffered_apart() -> None:
    guard, _ = pii_guard()
    a, b = "mail jane.doe.canary@exa", "call +44 20 79"
    chunks = [
        {"choices": [{"index": 0, "delta": {"content": a}}, {"index": 1, "delta": {"content": b}}]},
        {"choices": [{"index": 0, "delta": {"content": "mple.org"}, "finish_reason": "stop"}]},
        {"choices": [{"index": 1, "delta": {"content": "46 0958"}, "finish_reason": "stop"}]},
    ]
    out = run(guard, chunks)
    texts: dict[int, str] = {0: "", 1: ""}
    for c in out:
        for choice in c["choices"]:
            texts[choice["index"]] += choice["delta"].get("content") or ""
    assert texts == {0: "mail [REDACTED:EMAIL]", 1: "call [REDACTED:PHONE]"}
