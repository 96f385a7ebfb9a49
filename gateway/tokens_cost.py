"""Token counts (tiktoken, offline files shipped with litellm) and cost (litellm's bundled cost map).

The cost map is read from litellm's packaged JSON rather than through `import litellm`, which costs
seconds at start-up and milliseconds per lookup; the numbers are the same file litellm uses offline.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

import tiktoken

from gateway.offline import litellm_package_dir

O200K_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-4o", "gpt-oss")


@functools.cache
def _encoding(name: str) -> tiktoken.Encoding:
    return tiktoken.get_encoding(name)


def encoding_name_for(model: str) -> str:
    """cl100k_base or o200k_base for the target model (o200k for the GPT-4o family and later)."""
    base = model.rsplit("/", 1)[-1].lower()
    return "o200k_base" if base.startswith(O200K_PREFIXES) else "cl100k_base"


def encoding_for(model: str) -> tiktoken.Encoding:
    return _encoding(encoding_name_for(model))


def count_text_tokens(text: str, model: str = "") -> int:
    return len(encoding_for(model).encode(text, disallowed_special=()))


def message_text(message: Any) -> str:
    """The text of a chat message, whether its content is a string or a list of parts."""
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def count_message_tokens(messages: list[Any], model: str = "") -> int:
    """OpenAI's accounting: per message 3 tokens of framing plus its role, text and name (and 1 for a
    name), then 3 to prime the reply. The same count as litellm's `token_counter`."""
    enc = encoding_for(model)
    total = 3
    for message in messages:
        total += 3 + len(enc.encode(message_text(message), disallowed_special=()))
        if isinstance(message, dict):
            total += len(enc.encode(str(message.get("role") or ""), disallowed_special=()))
            if message.get("name"):
                total += 1 + len(enc.encode(str(message["name"]), disallowed_special=()))
    return total


@dataclass(frozen=True, slots=True)
class Prices:
    input_per_token: float
    output_per_token: float


@functools.cache
def _cost_map() -> dict[str, Any]:
    pkg = litellm_package_dir()
    if pkg is None:
        return {}
    path = pkg / "model_prices_and_context_window_backup.json"
    if not path.exists():
        return {}
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


@functools.cache
def prices_for(model: str) -> Prices | None:
    """Prices of a litellm-style model string; None when the cost map does not know the model."""
    cost_map = _cost_map()
    candidates = [model, model.split("/", 1)[-1], model.rsplit("/", 1)[-1]]
    for name in candidates:
        entry = cost_map.get(name)
        if isinstance(entry, dict) and "input_cost_per_token" in entry:
            return Prices(
                float(entry.get("input_cost_per_token") or 0), float(entry.get("output_cost_per_token") or 0)
            )
    return None


def cost_usd(prices: Prices | None, tokens_in: int, tokens_out: int) -> float | None:
    if prices is None:
        return None
    return tokens_in * prices.input_per_token + tokens_out * prices.output_per_token


USAGE_COUNTS = ("prompt_tokens", "completion_tokens", "total_tokens")


def token_count(value: Any) -> int | None:
    """A token count as an upstream's `usage` holds it (absent counts 0): a non-negative whole number,
    or None when it is not one (text, a negative or fractional number, true/false)."""
    value = value or 0
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or value != int(value):
        return None
    return int(value)


def usage_problem(usage: Any) -> str | None:
    """What is wrong with an upstream's `usage` (`usage.<field> = <value>`), or None when it is sound."""
    if not isinstance(usage, dict):
        return f"usage = {usage!r}"[:200]
    for name in USAGE_COUNTS:
        if token_count(usage.get(name)) is None:
            return f"usage.{name} = {usage.get(name)!r}"[:200]
    return None
