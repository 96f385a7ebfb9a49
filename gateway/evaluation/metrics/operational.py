"""Operational metrics from how the gateway served each case: latency, cost, tokens (lower is better)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.evaluation.metrics.base import EvalContext, MetricDef


@dataclass
class Field:
    name: str

    async def evaluate(self, ctx: EvalContext) -> float | None:
        value = getattr(ctx.output, self.name)
        return None if value is None else float(value)


def _field(name: str) -> MetricDef:
    return MetricDef(
        name,
        {
            "latency_ms": "wall time of the call as the evaluator saw it, in ms",
            "cost_usd": "cost of the call (the gateway's cost map), in USD",
            "tokens_out": "completion tokens",
        }[name],
        lambda params, resources: Field(name),
        reference_free=True,
        lower_is_better=True,
    )


FAMILY = [_field("latency_ms"), _field("cost_usd"), _field("tokens_out")]
