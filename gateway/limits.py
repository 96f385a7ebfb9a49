"""Per-request limits (`config/gateway.yaml` `limits:`): what one request may cost the gateway.

One request must not hold the event loop or burn unbounded CPU or memory: prompt rendering, the local
provider and embeddings each have limits here, every one a setting with a documented default and the
error it gives (docs/security.md "Limits"). The checks that need no model live here too.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from gateway.errors import InvalidRequest
from gateway.yamlspec import StrictModel


class RenderLimits(StrictModel):
    """Prompt templates (Jinja, sandboxed): rendered off the event loop, within these bounds."""

    timeout_s: float = Field(
        1.0, gt=0, le=60, description="Wall time one prompt's rendering may take (400 template_too_slow)."
    )
    max_output_chars: int = Field(
        4_000_000,
        gt=0,
        description="Characters a rendered message, or any string built while rendering, may hold"
        " (400 template_too_large).",
    )
    max_int_digits: int = Field(
        4300,
        gt=0,
        description="Decimal digits of any integer computed in a template (400 template_too_large).",
    )
    max_loop_iterations: int = Field(
        100_000,
        gt=0,
        description="Loop iterations in one message, all loops together (400 template_too_large).",
    )


class LocalLimits(StrictModel):
    """The embedded local provider (extractive chat): bounded input, run off the event loop."""

    max_input_chars: int = Field(
        200_000,
        gt=0,
        description="Characters of all messages of one chat request to the local provider"
        " (400 input_too_large, param messages).",
    )


class EmbeddingLimits(StrictModel):
    """/v1/embeddings, whatever the provider: checked before anything is sent or computed."""

    max_inputs: int = Field(
        2048, gt=0, description="Inputs in one request (400 too_many_inputs, param input)."
    )
    max_input_chars: int = Field(
        32_768, gt=0, description="Characters of one string input (400 input_too_large, param input.N)."
    )
    max_input_tokens: int = Field(
        8192, gt=0, description="Token ids in one token-array input (400 input_too_large, param input.N)."
    )


class RequestLimits(StrictModel):
    """Every model API body (/v1/chat/completions, /v1/responses, /v1/messages, /v1/conversations, ...)."""

    max_items: int = Field(
        10_000,
        gt=0,
        description="Objects in one top-level list of a body: chat and Messages `messages`, Responses `input`"
        " items (400 too_many_items, param the field). Each costs validation, screening and storing on the"
        " request path: 80,000 short messages held the event loop for a second.",
    )


class LimitsConfig(StrictModel):
    render: RenderLimits = RenderLimits()
    local: LocalLimits = LocalLimits()
    embeddings: EmbeddingLimits = EmbeddingLimits()
    requests: RequestLimits = RequestLimits()


def check_embedding_input(value: Any, limits: EmbeddingLimits, vocab_size: int) -> None:
    """400 naming the input that is too many, too long, or holds a token id outside the vocabulary
    (`vocab_size`: the largest vocabulary of the router's deployments)."""
    items = value if isinstance(value, list) and value and not isinstance(value[0], int) else [value]
    if len(items) > limits.max_inputs:
        raise InvalidRequest(
            f"input holds {len(items)} inputs; at most {limits.max_inputs} per request"
            " (limits.embeddings.max_inputs)",
            param="input",
            code="too_many_inputs",
        )
    single = len(items) == 1 and items[0] is value
    for i, item in enumerate(items):
        param = "input" if single else f"input.{i}"
        if isinstance(item, str):
            if len(item) > limits.max_input_chars:
                raise InvalidRequest(
                    f"{param} is {len(item)} characters long; at most {limits.max_input_chars}"
                    " (limits.embeddings.max_input_chars)",
                    param=param,
                    code="input_too_large",
                )
        elif isinstance(item, list):
            if not item:
                raise InvalidRequest(f"{param} is an empty token array", param=param, code="invalid_input")
            if len(item) > limits.max_input_tokens:
                raise InvalidRequest(
                    f"{param} holds {len(item)} token ids; at most {limits.max_input_tokens}"
                    " (limits.embeddings.max_input_tokens)",
                    param=param,
                    code="input_too_large",
                )
            for j, token in enumerate(item):
                if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < vocab_size:
                    raise InvalidRequest(
                        f"{param}.{j}: {token!r} is not a token id (0 to {vocab_size - 1})",
                        param=f"{param}.{j}",
                        code="invalid_token_id",
                    )
