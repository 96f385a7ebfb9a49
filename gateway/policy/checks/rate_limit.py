"""Rate limits: requests and tokens per minute, per key, principal, router or model (429 + Retry-After).

    - {type: rate_limit, rpm: 600, tpm: 200000, per: [key, router]}

Tokens are charged at admission as the request's input tokens (tiktoken, the target model's encoding);
once the call is over the bucket is settled to input + output tokens, so a long answer delays the next
requests instead of being refused after the fact.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from gateway.errors import OpsgateError, RateLimited
from gateway.policy.base import Charge, CheckConfig, Payload, PolicyCheck, Refusal, Subject, Usage

Scope = Literal["key", "principal", "router", "model"]


class RateLimitConfig(CheckConfig):
    type: Literal["rate_limit"]
    rpm: int | None = Field(None, gt=0, description="Requests per minute.")
    tpm: int | None = Field(None, gt=0, description="Tokens (input + output) per minute.")
    per: Scope | list[Scope] = "key"
    mode: Literal["block", "flag"] = "block"

    @model_validator(mode="after")
    def _some_limit(self) -> RateLimitConfig:
        if self.rpm is None and self.tpm is None:
            raise ValueError("a rate_limit needs rpm, tpm or both")
        return self

    @property
    def scopes(self) -> list[Scope]:
        return [self.per] if isinstance(self.per, str) else list(self.per)


def subjects_in(scope: str, subject: Subject) -> list[str]:
    if scope == "key":
        return [subject.key_id]
    if scope == "principal":
        return [subject.principal]
    return subject.names(scope)


class RateLimit(PolicyCheck[RateLimitConfig]):
    type = "rate_limit"
    config_model = RateLimitConfig
    phase = 60
    counts_tokens = True

    def admission_charges(self, subject: Subject) -> list[Charge]:
        cfg = self.config
        if cfg.rpm is None:
            return []
        return [
            Charge(
                base + ":rpm",
                "rate",
                cfg.rpm,
                1,
                soft=cfg.mode == "flag",
                what=f"requests per minute per {scope}",
            )
            for scope, base in self._counters(subject)
        ]

    def charges(self, subject: Subject, payload: Payload) -> list[Charge]:
        cfg = self.config
        if cfg.tpm is None:
            return []
        tokens = payload.input_tokens()
        return [
            Charge(
                base + ":tpm",
                "rate",
                cfg.tpm,
                tokens,
                soft=cfg.mode == "flag",
                what=f"tokens per minute per {scope}",
            )
            for scope, base in self._counters(subject)
        ]

    def _counters(self, subject: Subject) -> list[tuple[Scope, str]]:
        return [
            (scope, f"rl:{self.rule}:{self.name}:{scope}:{ident}")
            for scope in self.config.scopes
            for ident in subjects_in(scope, subject)
        ]

    def refused(self, refusal: Refusal) -> OpsgateError:
        charge = refusal.charge
        where = f"policy rule {self.rule!r} (rate_limit)"
        if charge.amount > charge.limit:
            return RateLimited(
                f"this request alone is {charge.amount} tokens, over the limit of {charge.limit} {charge.what}"
                f" ({where}); send fewer tokens",
                retry_after_s=charge.window_s,
                code="rate_limit_exceeded",
            )
        return RateLimited(
            f"rate limit reached: {charge.limit} {charge.what} ({where}); retry after"
            f" {max(1, round(refusal.retry_after_s))} s",
            retry_after_s=refusal.retry_after_s,
            code="rate_limit_exceeded",
        )

    def actual(self, charge: Charge, usage: Usage) -> int | None:
        if charge.counter.endswith(":tpm"):
            return usage.tokens_in + usage.tokens_out
        return None
