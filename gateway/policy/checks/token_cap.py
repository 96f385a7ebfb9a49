"""Token caps: input tokens counted with tiktoken for the target model (cl100k or o200k), and max_tokens.

    - {type: token_cap, max_input_tokens: 8000, max_output_tokens: 1024}

Over the input cap: 400 `context_length_exceeded` (OpenAI's code for the same problem). A request that
asks for more output than the cap: 400 on `max_tokens` (as OpenAI answers one over a model's limit); one
that asks for nothing gets `max_tokens: <cap>` added, so the cap holds and budgets can reserve the exact
worst case.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from gateway.errors import InvalidParameter, InvalidRequest
from gateway.policy.base import CheckConfig, Finding, Payload, PolicyCheck, Subject, Verdict


class TokenCapConfig(CheckConfig):
    type: Literal["token_cap"]
    max_input_tokens: int | None = Field(None, gt=0)
    max_output_tokens: int | None = Field(None, gt=0)
    mode: Literal["block", "flag"] = "block"

    @model_validator(mode="after")
    def _some_cap(self) -> TokenCapConfig:
        if self.max_input_tokens is None and self.max_output_tokens is None:
            raise ValueError("a token_cap needs max_input_tokens, max_output_tokens or both")
        return self


class TokenCap(PolicyCheck[TokenCapConfig]):
    type = "token_cap"
    config_model = TokenCapConfig
    phase = 50
    counts_tokens = True

    def check_input(self, subject: Subject, payload: Payload) -> Finding | None:
        cfg = self.config
        verdict: Verdict = "blocked" if cfg.mode == "block" else "flagged"
        where = f"policy rule {self.rule!r} (token_cap)"
        if cfg.max_input_tokens is not None and payload.kind in ("chat", "embedding"):
            tokens = payload.input_tokens()
            if tokens > cfg.max_input_tokens:
                error = InvalidRequest(
                    f"the input is {tokens} tokens, over the cap of {cfg.max_input_tokens} ({where});"
                    " shorten the messages",
                    param="messages" if payload.kind == "chat" else "input",
                    code="context_length_exceeded",
                )
                return Finding(verdict, f"input {tokens} > {cfg.max_input_tokens}", error)
        if cfg.max_output_tokens is None or payload.kind != "chat" or payload.body is None:
            return Finding("allowed")
        asked = payload.max_output_tokens()
        if asked is None:
            if cfg.mode == "block":
                payload.body["max_tokens"] = cfg.max_output_tokens
                return Finding("allowed", f"max_tokens set to {cfg.max_output_tokens}")
            return Finding("allowed")
        if asked > cfg.max_output_tokens:
            param = "max_completion_tokens" if "max_completion_tokens" in payload.body else "max_tokens"
            too_many = InvalidParameter(
                f"{param}: {asked} is over the cap of {cfg.max_output_tokens} ({where}); ask for at most"
                f" {cfg.max_output_tokens}",
                param=param,
                code="max_tokens_exceeded",
            )
            return Finding(verdict, f"{param} {asked} > {cfg.max_output_tokens}", too_many)
        return Finding("allowed")
