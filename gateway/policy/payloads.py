"""Payloads: the text of a request or answer as slots the checks can read and rewrite in place.

One builder per wire shape; checks see only `Payload`, so a new endpoint (classic ML records, say)
needs a builder here and nothing else:

    chat_payload(router, body, data)   an OpenAI chat body after planning (template + caller messages)
    embedding_payload(router, body)    an embeddings body (`input`)
    records_payload(records)           classic ML input rows: every string value is a slot
    chat_output(data)                  a chat completion's answers
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.policy.base import Payload, Slot
from gateway.tokens_cost import (
    Prices,
    count_message_tokens,
    count_text_tokens,
    encoding_name_for,
    message_text,
    prices_for,
)

if TYPE_CHECKING:
    from gateway.providers.deployment import Deployment
    from gateway.routing.router import Router

Json = dict[str, Any]


class TokenCounter:
    """Input tokens of chat messages (gateway.tokens_cost's count, OpenAI's framing), cached per message:
    system prompts and rendered templates repeat across requests, and tiktoken costs ~50 µs per KB.

    The count is additive per message (3 to prime the reply, plus each message's own framing and
    text), so `3 + sum(count([m]) - 3)` equals `count(messages)` exactly."""

    def __init__(self, size: int = 2048) -> None:
        self.size = size
        self._cache: dict[tuple[str, str, str, str], int] = {}

    def messages(self, messages: list[Any], model: str) -> int:
        encoding = encoding_name_for(model)
        total = 3
        for message in messages:
            if not isinstance(message, dict):
                total += count_message_tokens([message], model) - 3
                continue
            key = (
                encoding,
                str(message.get("role") or ""),
                str(message.get("name") or ""),
                message_text(message),
            )
            own = self._cache.get(key)
            if own is None:
                own = count_message_tokens([message], model) - 3
                if len(self._cache) >= self.size:
                    self._cache.clear()
                self._cache[key] = own
            total += own
        return total


def deployment_prices(deployment: Deployment) -> Prices | None:
    if deployment.input_cost_per_token is not None or deployment.output_cost_per_token is not None:
        return Prices(deployment.input_cost_per_token or 0.0, deployment.output_cost_per_token or 0.0)
    return prices_for(deployment.model)


def dearest_prices(router: Router) -> Prices | None:
    """The highest prices among a router's deployments: an estimate must not undercount a fallback."""
    known = [p for p in (deployment_prices(d) for d in router.spec.deployments) if p is not None]
    if not known:
        return None
    return Prices(max(p.input_per_token for p in known), max(p.output_per_token for p in known))


def _message_slots(messages: list[Any], first_caller: int) -> list[Slot]:
    slots: list[Slot] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        # Messages rendered from a prompt template are the prompt's, not the caller's.
        role = str(message.get("role")) if i >= first_caller else "prompt"
        content = message.get("content")
        if isinstance(content, str):
            slots.append(Slot(f"messages[{i}]", role, message, "content"))
        elif isinstance(content, list):
            for j, part in enumerate(content):
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    slots.append(Slot(f"messages[{i}].content[{j}]", role, part, "text"))
    return slots


def chat_payload(router: Router, body: Json, data: Json, counter: TokenCounter | None = None) -> Payload:
    """`body` is what goes upstream (rendered prompt messages, then the caller's); `data` the request."""
    messages = body.get("messages") or []
    caller = data.get("messages") or []
    slots = _message_slots(messages, len(messages) - len(caller))
    variables = data.get("prompt_variables")
    if isinstance(variables, dict):
        for name, value in variables.items():
            if isinstance(value, str):
                # Already rendered into the messages: screened for injection, redacted there.
                slots.append(Slot(f"prompt_variables.{name}", "variable", variables, name, upstream=False))
    model = router.spec.deployments[0].model
    count = counter.messages if counter is not None else count_message_tokens
    return Payload(
        "chat",
        slots,
        model,
        dearest_prices(router),
        body,
        token_counter=lambda: count(body.get("messages") or [], model),
    )


def embedding_payload(router: Router, body: Json) -> Payload:
    raw = body.get("input")
    slots: list[Slot] = []
    if isinstance(raw, str):
        slots.append(Slot("input", "input", body, "input"))
    elif isinstance(raw, list):
        slots.extend(Slot(f"input[{i}]", "input", raw, i) for i, v in enumerate(raw) if isinstance(v, str))
    model = router.spec.deployments[0].model

    def tokens() -> int:
        value = body.get("input")
        items = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        if items and all(isinstance(v, int) for v in items):
            return len(items)  # one array of token ids
        return sum(count_text_tokens(v, model) if isinstance(v, str) else len(v) for v in items)

    return Payload("embedding", slots, model, dearest_prices(router), body, token_counter=tokens)


def records_payload(records: list[Json], *, kind: str = "ml") -> Payload:
    """Classic ML input rows: string values can be screened (PII) like any text; no tokens, no price."""
    slots = [
        Slot(f"records[{i}].{name}", "input", row, name)
        for i, row in enumerate(records)
        for name, value in row.items()
        if isinstance(value, str)
    ]
    return Payload(kind, slots)


def chat_output(data: Json) -> Payload:
    slots: list[Slot] = []
    for i, choice in enumerate(data.get("choices") or ()):
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            slots.append(Slot(f"choices[{i}]", "output", message, "content"))
    return Payload("output", slots)
