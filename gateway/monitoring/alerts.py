"""Alerts: HMAC-signed webhooks, shared by every monitor (online eval scores, drift, fairness, accuracy).

Each delivery is a JSON POST with headers
    X-Opsgate-Event: <kind>                       e.g. drift, fairness, accuracy, online_eval
    X-Opsgate-Timestamp: <unix seconds>
    X-Opsgate-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" with the webhook's secret>
so a receiver can check origin and freshness. Deliveries run off the request path, with retries.
Webhooks post only to hosts on the operator's `egress.webhook_hosts` (checked when config/gateway.yaml
loads, and again before each delivery); redirects are not followed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from gateway.egress import Egress
from gateway.monitoring.config import AlertsConfig, WebhookConfig

log = logging.getLogger("opsgate.alerts")


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str, *, max_age_s: float = 300) -> bool:
    """For receivers (and tests): signature matches and the timestamp is fresh."""
    try:
        fresh = abs(time.time() - float(timestamp)) <= max_age_s
    except ValueError:
        return False
    return fresh and hmac.compare_digest(sign(secret, timestamp, body), signature)


async def post_signed(
    url: str,
    kind: str,
    body: bytes,
    secret: str,
    *,
    timeout_s: float,
    headers: dict[str, str] | None = None,
    session: aiohttp.ClientSession | None = None,
) -> str | None:
    """One signed POST of an event; None when the receiver took it (2xx), else what went wrong. The
    caller has checked the URL against the operator's egress rules."""
    timestamp = str(int(time.time()))
    sent = {
        "Content-Type": "application/json",
        "X-Opsgate-Event": kind,
        "X-Opsgate-Timestamp": timestamp,
        **(headers or {}),
    }
    if secret:
        sent["X-Opsgate-Signature"] = sign(secret, timestamp, body)
    try:
        async with contextlib.AsyncExitStack() as stack:
            if session is None:
                session = await stack.enter_async_context(aiohttp.ClientSession())
            resp = await stack.enter_async_context(
                session.post(
                    url,
                    data=body,
                    headers=sent,
                    timeout=aiohttp.ClientTimeout(total=timeout_s),
                    allow_redirects=False,
                )
            )
            return None if resp.status < 300 else f"HTTP {resp.status}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"


@dataclass
class AlertStats:
    sent: int = 0
    failed: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


class Alerts:
    """Send alert events to the configured webhooks. `emit` never blocks the caller."""

    def __init__(
        self,
        config: AlertsConfig,
        egress: Egress | None = None,
        *,
        audit_tip: Callable[[], dict[str, Any] | None] | None = None,
    ) -> None:
        self.config = config
        # the newest anchored audit entry rides along with every alert: a copy of the tip outside the
        # database and the data directory (gateway/registry/audit.py)
        self.audit_tip = audit_tip
        self.egress = egress or Egress()  # the defaults allow no webhook host
        self.stats = AlertStats()
        self._tasks: set[asyncio.Task[None]] = set()

    def _event(self, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        event = {"event": kind, "time": time.time(), **payload}
        if self.audit_tip is not None:
            try:
                event["audit_tip"] = self.audit_tip()
            except OSError:
                event["audit_tip"] = None
        return event

    def emit(self, kind: str, payload: dict[str, Any]) -> None:
        event = self._event(kind, payload)
        self.stats.history = [*self.stats.history[-99:], event]
        for hook in self.config.webhooks:
            if "*" in hook.events or kind in hook.events:
                task = asyncio.get_running_loop().create_task(self._deliver(hook, kind, event))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def send(self, kind: str, payload: dict[str, Any]) -> None:
        """Deliver now and wait (for commands outside the server, e.g. a CLI monitor run)."""
        event = self._event(kind, payload)
        await asyncio.gather(
            *(
                self._deliver(h, kind, event)
                for h in self.config.webhooks
                if "*" in h.events or kind in h.events
            )
        )

    async def _deliver(self, hook: WebhookConfig, kind: str, event: dict[str, Any]) -> None:
        refused = self.egress.webhook_problem(hook.url)
        if refused:  # the host is never contacted, the secret never read
            self.stats.failed += 1
            log.warning("alert %s not sent: %s", kind, refused)
            return
        body = orjson.dumps(event, option=orjson.OPT_SERIALIZE_NUMPY)
        secret = os.environ.get(hook.secret_env, "") if hook.secret_env else ""
        error: str | None = None
        for attempt in range(hook.retries + 1):
            error = await post_signed(hook.url, kind, body, secret, timeout_s=hook.timeout_s)
            if error is None:
                self.stats.sent += 1
                return
            if attempt < hook.retries:
                await asyncio.sleep(0.2 * 2**attempt)
        self.stats.failed += 1
        log.warning("alert %s to %s failed after %d attempts: %s", kind, hook.url, hook.retries + 1, error)

    async def close(self) -> None:
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=5)
