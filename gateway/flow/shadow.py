"""Shadow traffic: a rollout's candidate also answers a sample of live requests, off the request path.

    live request ──► resolve (the alias's control serves; the request is sampled) ──► answer ──► finish
                                                                                                  │
    ShadowRunner.submit ◄─────────────────────────────────────────────────────────────────────────┘
        └─► a background task: the same body, the candidate version pinned, through the same flow
            (its answer is dropped; its log row says `extra.rollout.arm = "shadow"`)

A shadow call counts against no caller's limits or budget (the policy pipeline runs its content checks
uncounted: gateway/policy/pipeline.py `uncounted`), is never stored in the traffic store and never
observed in the request metrics. At most `max_in_flight` shadow calls run at once per replica: a sample
that finds the bound reached is dropped and counted, so a slow candidate costs memory and sockets only
up to the bound and never delays a live answer.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.flow.call import Call

log = logging.getLogger("opsgate.rollouts")
SKIPPED_FIELDS = ("stream", "stream_options", "store")


@dataclass(frozen=True, slots=True)
class Pin:
    """A shadow call's version: the candidate of one rollout, whatever the alias serves."""

    kind: str
    name: str
    version: int
    rollout_id: str


@dataclass(frozen=True, slots=True)
class ShadowOrder:
    """What a sampled live request leaves for its shadow: the pinned candidate and the body as sent."""

    pin: Pin
    body: dict[str, Any]

    def shadow_body(self) -> dict[str, Any]:
        """The live body as one non-streamed request (the shadow's answer is read whole, then dropped)."""
        return {k: v for k, v in self.body.items() if k not in SKIPPED_FIELDS}


@dataclass(slots=True)
class ShadowStats:
    sampled: int = 0  # live requests sampled for this rollout
    started: int = 0
    dropped: int = 0  # sampled while the bound was reached
    failed: int = 0  # shadow calls that ended in an error (their log rows say which)

    def as_dict(self) -> dict[str, int]:
        return {
            "sampled": self.sampled,
            "started": self.started,
            "dropped": self.dropped,
            "failed": self.failed,
        }


Run = Callable[["Call", ShadowOrder, str], Awaitable[int]]


@dataclass
class ShadowRunner:
    """Bounded background shadow calls of one replica. `run(live call, order, request id)` performs one
    (Gateway.shadow_chat) and returns its status."""

    run: Run
    max_in_flight: int = 8
    in_flight: int = 0
    stats: dict[str, ShadowStats] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def dropped(self) -> int:
        return sum(s.dropped for s in self.stats.values())

    def stats_for(self, rollout_id: str) -> dict[str, int]:
        found = self.stats.get(rollout_id)
        out = (found or ShadowStats()).as_dict()
        out["in_flight"] = sum(1 for t in self._tasks if t.get_name() == f"opsgate-shadow-{rollout_id}")
        return out

    def submit(self, call: Call, order: ShadowOrder) -> None:
        """Called as the live call finishes (on the event loop): start its shadow, or drop it when
        `max_in_flight` are running. Never blocks and never raises into the request."""
        stats = self.stats.setdefault(order.pin.rollout_id, ShadowStats())
        stats.sampled += 1
        if self.in_flight >= self.max_in_flight:
            stats.dropped += 1
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # finished outside the server's loop (a tool): no shadow to run
            stats.dropped += 1
            return
        self.in_flight += 1
        stats.started += 1
        request_id = "req_" + secrets.token_hex(12)
        task = loop.create_task(
            self._one(call, order, request_id, stats), name=f"opsgate-shadow-{order.pin.rollout_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _one(self, call: Call, order: ShadowOrder, request_id: str, stats: ShadowStats) -> None:
        try:
            await asyncio.sleep(0)  # let the live answer go out first
            status = await self.run(call, order, request_id)
            if status >= 400:
                stats.failed += 1
        except Exception:  # a background task: say it here, the live answer is unaffected
            stats.failed += 1
            log.exception("shadow call %s of rollout %s failed", request_id, order.pin.rollout_id)
        finally:
            self.in_flight -= 1

    async def stop(self) -> None:
        """At shutdown: shadow answers are never returned, so the calls still running are cut."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
