"""Budgets: spend in USD per key or principal per UTC day and month (429 until the period ends).

    - {type: budget, usd_per_day: 50, usd_per_month: 1000, per: [key, principal]}

Before the call a request reserves an estimate: its input tokens (tiktoken) times the input price plus
`max_tokens` (or `reserve_output_tokens` when it sets none) times the output price, at the dearest
deployment of its router (litellm's cost map, or the deployment's own prices). It is admitted only if
spent + reserved + estimate <= limit. After the call the reservation is released and the true cost
(from the upstream's usage) is added.

Overshoot bound: a request's true cost can exceed its estimate only when its answer is longer than the
output tokens reserved for it, or when the upstream counts more prompt tokens than tiktoken did. So the
spend never exceeds the limit by more than the sum, over the requests in flight at once, of (true cost -
estimate); with `max_tokens` set (token_cap's max_output_tokens sets it) that is zero up to tokenizer
differences; without it, at most `concurrent requests x (longest answer - reserve_output_tokens) x output
price`. Without Redis the ledgers are per process: N replicas may spend N x the limit.
"""

from __future__ import annotations

import calendar
import functools
import time
from datetime import UTC, datetime
from typing import Literal

from pydantic import Field, model_validator

from gateway.errors import OpsgateError, RateLimited
from gateway.policy.base import Charge, CheckConfig, Payload, PolicyCheck, Refusal, Subject, Usage

NANO = 1_000_000_000
Scope = Literal["key", "principal"]


def nano_usd(usd: float) -> int:
    return round(usd * NANO)


def day_period(now: float) -> tuple[str, float]:
    """(period id, end in epoch seconds) of the UTC day holding `now`."""
    return _day(int(now // 86_400))


def month_period(now: float) -> tuple[str, float]:
    return _month(int(now // 86_400))


@functools.lru_cache(maxsize=4)
def _day(day: int) -> tuple[str, float]:
    date = datetime.fromtimestamp(day * 86_400, UTC).date()
    return f"d{date:%Y%m%d}", float((day + 1) * 86_400)


@functools.lru_cache(maxsize=4)
def _month(day: int) -> tuple[str, float]:
    moment = datetime.fromtimestamp(day * 86_400, UTC)
    year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    end = calendar.timegm((year, month, 1, 0, 0, 0))
    return f"m{moment:%Y%m}", float(end)


def ledger(scope: str, ident: str, period_id: str) -> str:
    """The counter holding a key's or principal's spend in one period (shared by every rule)."""
    return f"spend:{scope}:{ident}:{period_id}"


class BudgetConfig(CheckConfig):
    type: Literal["budget"]
    usd_per_day: float | None = Field(None, gt=0)
    usd_per_month: float | None = Field(None, gt=0)
    per: Scope | list[Scope] = "key"
    reserve_output_tokens: int = Field(
        1024, ge=0, description="Output tokens reserved for a request that sets no max_tokens."
    )
    mode: Literal["block", "flag"] = "block"

    @model_validator(mode="after")
    def _some_limit(self) -> BudgetConfig:
        if self.usd_per_day is None and self.usd_per_month is None:
            raise ValueError("a budget needs usd_per_day, usd_per_month or both")
        return self

    @property
    def scopes(self) -> list[Scope]:
        return [self.per] if isinstance(self.per, str) else list(self.per)


def estimate_usd(payload: Payload, reserve_output_tokens: int) -> float:
    prices = payload.prices
    if prices is None:
        return 0.0
    output = payload.max_output_tokens()
    if output is None:
        output = reserve_output_tokens if payload.kind == "chat" else 0
    return payload.input_tokens() * prices.input_per_token + output * prices.output_per_token


class Budget(PolicyCheck[BudgetConfig]):
    type = "budget"
    config_model = BudgetConfig
    phase = 70
    counts_tokens = True
    tracks_spend = True

    def charges(self, subject: Subject, payload: Payload) -> list[Charge]:
        cfg = self.config
        amount = nano_usd(estimate_usd(payload, cfg.reserve_output_tokens))
        now = time.time()
        periods = []
        if cfg.usd_per_day is not None:
            periods.append(("day", cfg.usd_per_day, *day_period(now)))
        if cfg.usd_per_month is not None:
            periods.append(("month", cfg.usd_per_month, *month_period(now)))
        out: list[Charge] = []
        for scope in cfg.scopes:
            ident = subject.key_id if scope == "key" else subject.principal
            for period, usd, period_id, end in periods:
                out.append(
                    Charge(
                        ledger(scope, ident, period_id),
                        "budget",
                        nano_usd(usd),
                        amount,
                        period_end=end,
                        soft=cfg.mode == "flag",
                        what=f"the {scope}'s {period} budget",
                    )
                )
        return out

    def refused(self, refusal: Refusal) -> OpsgateError:
        charge = refusal.charge
        return RateLimited(
            f"budget exhausted: {charge.what} is ${charge.limit / NANO:g} (policy rule {self.rule!r},"
            f" budget) and what is spent or reserved leaves no room for this request (estimated"
            f" ${charge.amount / NANO:.6f}); it resets in {max(1, round(refusal.retry_after_s))} s",
            retry_after_s=refusal.retry_after_s,
            code="budget_exceeded",
        )

    def actual(self, charge: Charge, usage: Usage) -> int | None:
        return nano_usd(usage.cost_usd)
