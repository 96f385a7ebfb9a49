"""A restarted in-process budget is seeded from the request log: a shadow call's cost, logged with the
live caller's key and principal, was never charged and is not seeded either (SQLite and PostgreSQL)."""

from __future__ import annotations

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from gateway.db.generation import utcnow
from gateway.db.models import RequestLog
from gateway.policy.checks.budget import day_period, ledger
from gateway.policy.quota import MemoryStore
from gateway.policy.setup import seed_spend


def _row(i: int, cost: float, extra: dict[str, object]) -> RequestLog:
    return RequestLog(
        id=f"req_seed_{i}", ts=utcnow(), key_id="key_a", principal="app-a", route="/v1/chat/completions",
        model="m", artifacts=[], status=200, latency_ms=5.0, cost_usd=cost, attempts=[], decisions=[],
        extra=extra,
    )  # fmt: skip


def test_shadow_costs_are_not_seeded_into_budgets(engine: Engine) -> None:
    rollout = {"id": "rol_x", "target": "router:r"}
    with Session(engine) as session, session.begin():
        session.add(_row(1, 0.25, {}))
        session.add(_row(2, 0.5, {"rollout": rollout | {"arm": "control", "shadowed": True}}))
        session.add(_row(3, 4.0, {"rollout": rollout | {"arm": "shadow"}, "shadow_of": "req_seed_2"}))
        session.add(_row(4, 0.125, {"policy": "abc"}))
    store = MemoryStore()
    assert seed_spend(engine, store) > 0
    period, _ = day_period(utcnow().timestamp())
    for counter in (ledger("key", "key_a", period), ledger("principal", "app-a", period)):
        assert store.ledgers[counter].spent == 875_000_000  # 0.25 + 0.5 + 0.125 USD in nano-USD, not 4.875
