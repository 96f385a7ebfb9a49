"""The rollout evaluator: a background task of the app that checks every live rollout on its interval.

Each tick takes the cluster-wide rollout lock without waiting (gateway/db/locks.py): one replica
evaluates, the others skip the tick. A rollout is checked when its own `interval_s` has passed since
its last check. Transitions compare-and-set the rollout's state, so even two evaluators racing (a lock
lost with its connection) roll back or promote once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.db.generation import as_utc, utcnow
from gateway.db.locks import PG_ROLLOUT_LOCK, try_lock
from gateway.db.models import Rollout
from gateway.db.outage import Outage
from gateway.rollouts.service import ACTIVE, AWAITING, RolloutService

log = logging.getLogger("opsgate.rollouts")


class RolloutEvaluator:
    def __init__(
        self,
        service: RolloutService,
        *,
        tick_s: float,
        notify: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.service = service
        self.tick_s = tick_s
        self.notify = notify  # webhook events (Alerts.emit): rollout.rolled_back | promoted | held
        self._task: asyncio.Task[None] | None = None
        self.outage = Outage("rollout evaluator: database", log)

    def due(self, now: datetime) -> list[str]:
        """Live rollouts whose interval has passed since their last check (or that were never checked)."""
        out: list[str] = []
        with Session(self.service.engine) as s:
            rows = s.execute(
                select(Rollout.id, Rollout.spec, Rollout.last_check).where(
                    Rollout.state.in_((AWAITING, ACTIVE))
                )
            )
            for rollout_id, spec, last in rows:
                checked = (last or {}).get("checked_at")
                interval = float(spec.get("interval_s", 60.0))
                if (
                    checked is None
                    or (now - as_utc(datetime.fromisoformat(checked))).total_seconds() >= interval
                ):
                    out.append(rollout_id)
        return out

    def tick(self) -> list[dict[str, Any]]:
        """One round (blocking): the due rollouts, checked under the cluster-wide lock."""
        with try_lock(self.service.engine, PG_ROLLOUT_LOCK) as mine:
            if not mine:
                return []
            results = []
            for rollout_id in self.due(utcnow()):
                result = self.service.check(rollout_id)
                if result.get("decision") not in (None, "continue"):
                    log.warning("rollout %s: %s %s", rollout_id, result["decision"], result.get("tests"))
                results.append(result)
            return results

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="opsgate-rollouts")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                results = await asyncio.to_thread(self.tick)
            except Exception as exc:  # noqa: BLE001 - one line per change of state; the next tick retries
                self.outage.failed(exc, "rollouts are not being judged until the database answers")
            else:
                self.outage.recovered()
                self._announce(results)

    def _announce(self, results: list[dict[str, Any]]) -> None:
        for result in results:
            decision = result.get("decision")
            if self.notify is not None and decision not in (None, "continue"):
                self.notify(f"rollout.{decision}", result)
