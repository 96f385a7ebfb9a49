"""Token counts and prices agree with litellm (the reference the issue names), offline."""

from __future__ import annotations

from typing import Any

import litellm
import pytest

from gateway.tokens_cost import (
    cost_usd,
    count_message_tokens,
    count_text_tokens,
    encoding_name_for,
    prices_for,
)

CONVERSATIONS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "hello world again"}],
    [
        {"role": "system", "content": "Be terse. Paris is in France."},
        {"role": "user", "content": "Where is Paris?"},
    ],
    [{"role": "user", "content": "hi", "name": "bob_the_builder"}],
    [
        {"role": "developer", "content": "rules"},
        {"role": "assistant", "content": "ok then"},
        {"role": "user", "content": [{"type": "text", "text": "a question in one part"}]},
    ],
]


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-3.5-turbo", "openai/gpt-4o"])
@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["one", "system", "name", "parts"])
def test_message_tokens_match_litellm(model: str, messages: list[dict[str, Any]]) -> None:
    assert count_message_tokens(messages, model) == litellm.token_counter(model=model, messages=messages)


def test_text_tokens_use_the_model_family_encoding() -> None:
    assert encoding_name_for("openai/gpt-4o-mini") == "o200k_base"
    assert encoding_name_for("gpt-3.5-turbo") == "cl100k_base"
    text = "Tokenisation differs between families: ünïcödé and emoji 🚀 too."
    assert count_text_tokens(text, "gpt-4o") == litellm.token_counter(model="gpt-4o", text=text)
    assert count_text_tokens(text, "gpt-3.5-turbo") == litellm.token_counter(model="gpt-3.5-turbo", text=text)


@pytest.mark.parametrize("model", ["openai/gpt-4o-mini", "gpt-4o", "anthropic/claude-sonnet-4-5"])
def test_prices_and_cost_come_from_litellm_cost_map(model: str) -> None:
    prices = prices_for(model)
    assert prices is not None
    prompt_cost, completion_cost = litellm.cost_per_token(
        model=model, prompt_tokens=1000, completion_tokens=200
    )
    assert cost_usd(prices, 1000, 200) == pytest.approx(prompt_cost + completion_cost, rel=1e-12)


def test_unknown_models_have_no_price() -> None:
    assert prices_for("openai/no-such-model-xyz") is None
    assert cost_usd(None, 10, 10) is None
