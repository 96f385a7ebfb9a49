"""Build the pipeline from settings: the policy file, the checks registered, and the quota store.

With `OPSGATE_REDIS_URL` the counters live in Redis (shared by replicas, surviving restarts); without
it they are in-process, and each key's and principal's spend this day and month is read back from the
request log (`cost_usd` per row) at start-up, so a restart does not reset budgets.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, func, or_, select

from gateway.db.models import RequestLog
from gateway.policy.base import PolicyCheck
from gateway.policy.checks.budget import day_period, ledger, month_period, nano_usd
from gateway.policy.pipeline import Pipeline
from gateway.policy.quota import MemoryStore, QuotaStore, RedisStore
from gateway.policy.spec import POLICY_FILE, LoadedPolicy, load_policy, registered_checks, spec_model
from gateway.registry.hashing import content_hash
from gateway.registry.rules import served_ref, served_spec
from gateway.settings import GatewayConfig, Settings


def build_pipeline(settings: Settings, config: GatewayConfig, engine: Engine | None) -> Pipeline:
    """The policy in force is the version of `policy:policies` at `production` (gateway/registry/rules.py);
    the gateway follows that alias as it moves (`Pipeline.follow`), never the file. Only when the registry
    has no policy version yet (a project that is not a git repository) is the file read, once, at start."""
    checks = registered_checks()
    file = settings.config_dir / POLICY_FILE
    display = settings.display_path(file)
    served = served_spec(engine, "policy") if engine is not None else None
    if served is not None:
        policy = registered_policy(served, checks, served_ref(engine, "policy") if engine else "")
    else:
        policy = load_policy(file, checks, display=display)
    store: QuotaStore
    if settings.redis_url:
        store = RedisStore(settings.redis_url, prefix=settings.redis_prefix)
    else:
        store = MemoryStore()
    return Pipeline(
        policy,
        checks,
        store,
        display=display,
        refresh_interval_s=config.cache.refresh_interval_s,
        spend_seed=(lambda s: seed_spend(engine, s)) if engine is not None else None,
    )


def registered_policy(
    spec: dict[str, object], checks: Mapping[str, type[PolicyCheck[Any]]], source: str
) -> LoadedPolicy:
    parsed = spec_model(checks).model_validate(spec)
    return LoadedPolicy(parsed, content_hash(parsed), source)


def seed_spend(engine: Engine, store: MemoryStore, now: float | None = None) -> int:
    """Fill the day and month ledgers from the request log. Returns how many ledgers were seeded.
    A rollout's shadow calls (`extra.rollout.arm == "shadow"`) were never charged: they stay out."""
    now = time.time() if now is None else now
    seeded = 0
    arm = RequestLog.extra[("rollout", "arm")].as_string()
    for period_id, end in (month_period(now), day_period(now)):
        start = end - 86_400 if period_id.startswith("d") else _month_start(now)
        since = datetime.fromtimestamp(start, UTC)
        query = (
            select(RequestLog.key_id, RequestLog.principal, func.sum(RequestLog.cost_usd))
            .where(RequestLog.ts >= since, RequestLog.cost_usd > 0, or_(arm.is_(None), arm != "shadow"))
            .group_by(RequestLog.key_id, RequestLog.principal)
        )
        with engine.connect() as conn:
            rows = conn.execute(query).all()
        for key_id, principal, spent in rows:
            amount = nano_usd(float(spent or 0))
            if key_id:
                store.add_spent(ledger("key", key_id, period_id), amount, end)
                seeded += 1
            if principal:
                store.add_spent(ledger("principal", principal, period_id), amount, end)
                seeded += 1
    return seeded


def _month_start(now: float) -> float:
    moment = datetime.fromtimestamp(now, UTC)
    return datetime(moment.year, moment.month, 1, tzinfo=UTC).timestamp()


def validate_policy_file(settings: Settings) -> None:
    """Parse config/policies.yaml now (raises ConfigError naming file, line and field)."""
    file = settings.config_dir / POLICY_FILE
    load_policy(file, registered_checks(), display=settings.display_path(file))
