"""Alert rules at work: judged on an interval, across replicas, announced once per episode.

Each tick one replica judges the rules (the cluster-wide alerts lock, taken without waiting, as the
rollout evaluator does); each rule's transitions are also serialised by a lock row per rule (as the ML
monitor serialises its judgements per version), so two judges racing still move a state once:

    ok ──breached──► pending ──breached for `for`──► firing ──not breached──► ok
     ▲                  │ not breached                  (episode n: one `alert.firing`, one `alert.resolved`)
     └──────────────────┘

A transition to firing or back writes notices into an outbox table in the same transaction, one per
receiver, under a unique (rule, subject, episode, event, receiver) key: that key is the de-duplication.
Any replica delivers due notices: it claims one by moving its due time forward (compare-and-set, so one
replica sends it), POSTs it signed (gateway/monitoring/alerts.py), and on failure retries with doubling
backoff up to the receiver's `retries`. A replica killed between the POST and recording it lets the
claim lapse and another sends it again: delivery is at least once, and each notice carries a stable
`X-Opsgate-Delivery` id for receivers that must not see a notice twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.db.generation import as_utc, lock_key, utcnow
from gateway.db.locks import PG_ALERTS_LOCK, try_lock
from gateway.db.models import AlertNotification, AlertState
from gateway.db.outage import Outage
from gateway.egress import Egress
from gateway.monitoring.alertrules import ALERTS_FILE, AlertRule, AlertsSpec, figures
from gateway.monitoring.alerts import post_signed
from gateway.registry.rules import served_ref, served_spec
from gateway.yamlspec import load_spec_text

log = logging.getLogger("opsgate.alerting")
OK, PENDING, FIRING = "ok", "pending", "firing"
RANK = {OK: 0, PENDING: 1, FIRING: 2}
MAX_BACKOFF_S = 300.0


def load_file_rules(config_dir: Path, display: str) -> AlertsSpec:
    """config/alerts.yaml as committed to the working tree (used only while the registry has no
    `alert:alerts` version at production); no file: no rules. Read like every file an author commits
    (never through a link) and checked against the operator's egress rules, as `opsgate sync` does."""
    from gateway.registry.files import file_context
    from gateway.registry.tree import read_author_text

    file = config_dir / ALERTS_FILE
    if not os.path.lexists(file):
        return AlertsSpec()
    project = config_dir.parent
    text = read_author_text(project, file, display)
    return load_spec_text(text, AlertsSpec, display, context=file_context(project))


class AlertEngine:
    """Judge the rules, keep their states, deliver the outbox. Blocking methods run in a thread."""

    def __init__(
        self,
        engine: Engine,
        file_rules: AlertsSpec,
        egress: Egress | None = None,
        *,
        audit_tip: Callable[[], dict[str, Any] | None] | None = None,
    ) -> None:
        self.engine = engine
        self.file_rules = file_rules
        self.egress = egress or Egress()
        self.audit_tip = audit_tip
        self.outage = Outage("alert rules: database", log)
        self._task: asyncio.Task[None] | None = None
        self._last_eval = 0.0
        self._interval = file_rules.evaluate_every_s

    # -- the rules in force -------------------------------------------------------------------------------

    def rules(self) -> tuple[AlertsSpec, str]:
        """The `alert:alerts` version at production, else the file read at start."""
        served = served_spec(self.engine, "alert")
        if served is None:
            return self.file_rules, "file"
        return AlertsSpec.model_validate(served), served_ref(self.engine, "alert")

    # -- judging ------------------------------------------------------------------------------------------

    def evaluate(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """One round (blocking): every rule judged, under the cluster-wide lock. Returns the transitions
        (empty when another replica holds the lock)."""
        with try_lock(self.engine, PG_ALERTS_LOCK) as mine:
            if not mine:
                return []
            now = now or utcnow()
            spec, source = self.rules()
            changes: list[dict[str, Any]] = []
            for rule in spec.rules:
                values = figures(self.engine, rule, now)
                changes.extend(self._judge(rule, source, values, now))
            changes.extend(self._forget(spec, source, now))
            return changes

    def _judge(
        self, rule: AlertRule, source: str, values: dict[str, float | None], now: datetime
    ) -> list[dict[str, Any]]:
        for attempt in range(2):
            try:
                with Session(self.engine) as session, session.begin():
                    lock_key(session, "alert:" + rule.name[:58])
                    known = {
                        s.subject: s
                        for s in session.scalars(select(AlertState).where(AlertState.rule == rule.name))
                    }
                    out = []
                    for subject in sorted(set(values) | set(known)):
                        change = self._step(session, rule, source, subject, values.get(subject), known, now)
                        if change is not None:
                            out.append(change)
                    return out
            except IntegrityError:  # two judges created the rule's lock row at once: it exists now
                if attempt:
                    raise
        return []

    def _step(
        self,
        session: Session,
        rule: AlertRule,
        source: str,
        subject: str,
        value: float | None,
        known: dict[str, AlertState],
        now: datetime,
    ) -> dict[str, Any] | None:
        row = known.get(subject)
        if row is None:
            row = AlertState(rule=rule.name, subject=subject, state=OK, since=now, episode=0)
            session.add(row)
        row.value, row.evaluated_at = value, now
        breached = value is not None and rule.breached(value)
        before = row.state
        if breached and row.state == OK:
            row.state, row.since = PENDING, now
        if breached and row.state == PENDING and (now - as_utc(row.since)).total_seconds() >= rule.for_:
            row.state, row.since, row.episode = FIRING, now, row.episode + 1
            self._notify(session, rule, source, row, "firing", now)
        elif not breached and row.state == PENDING:
            row.state, row.since = OK, now
        elif not breached and row.state == FIRING:
            self._notify(session, rule, source, row, "resolved", now)
            row.state, row.since = OK, now
        if row.state == before:
            return None
        return {"rule": rule.name, "subject": subject, "from": before, "to": row.state, "value": value}

    def _forget(self, spec: AlertsSpec, source: str, now: datetime) -> list[dict[str, Any]]:
        """States of rules no longer in force go back to ok; a firing one is resolved (reason: the rule was
        removed). The rows stay: a rule added again under that name goes on counting its episodes (the
        outbox's unique key includes them)."""
        names = {r.name for r in spec.rules}
        out = []
        with Session(self.engine) as session, session.begin():
            gone = select(AlertState).where(AlertState.rule.not_in(names or {""}), AlertState.state != OK)
            for row in session.scalars(gone):
                if row.state == FIRING:
                    removed = AlertRule(name=row.rule, metric="requests", threshold=0)
                    self._notify(session, removed, source, row, "resolved", now, reason="rule removed")
                out.append({"rule": row.rule, "subject": row.subject, "from": row.state, "to": "removed"})
                row.state, row.since, row.value, row.evaluated_at = OK, now, None, now
        return out

    def _notify(
        self,
        session: Session,
        rule: AlertRule,
        source: str,
        row: AlertState,
        event: str,
        now: datetime,
        *,
        reason: str | None = None,
    ) -> None:
        payload: dict[str, Any] = {
            "event": f"alert.{event}",
            "id": f"{rule.name}/{row.subject}/{row.episode}",
            "rule": rule.name,
            "subject": row.subject,
            "episode": row.episode,
            "severity": rule.severity,
            "summary": f"{rule.name} ({row.subject}): {rule.describe()}",
            "description": rule.description,
            "metric": rule.metric,
            "value": row.value,
            "op": rule.op,
            "threshold": rule.threshold,
            "window_s": rule.window,
            "for_s": rule.for_,
            "firing_since": as_utc(row.since).isoformat() if event == "resolved" else now.isoformat(),
            "time": now.isoformat(),
            "rules": source,
        }
        if reason:
            payload["reason"] = reason
        receivers = rule.receivers
        if event == "resolved":  # to whoever was told it fired (the rule's receivers may have changed)
            receivers = list(
                session.scalars(
                    select(AlertNotification.receiver).where(
                        AlertNotification.rule == rule.name,
                        AlertNotification.subject == row.subject,
                        AlertNotification.episode == row.episode,
                        AlertNotification.event == "firing",
                    )
                )
            )
        for receiver in receivers:
            session.add(
                AlertNotification(
                    rule=rule.name,
                    subject=row.subject,
                    episode=row.episode,
                    event=event,
                    receiver=receiver,
                    payload=payload,
                    status="pending",
                    attempts=0,
                    next_at=now,
                    created_at=now,
                )
            )

    # -- delivering ---------------------------------------------------------------------------------------

    def claim_due(
        self, spec: AlertsSpec, now: datetime | None = None, limit: int = 50
    ) -> list[AlertNotification]:
        """Notices due now that this process won (their due time moved past the attempt's lease)."""
        now = now or utcnow()
        won: list[AlertNotification] = []
        with Session(self.engine, expire_on_commit=False) as session:
            due = session.scalars(
                select(AlertNotification)
                .where(AlertNotification.status == "pending", AlertNotification.next_at <= now)
                .order_by(AlertNotification.id)
                .limit(limit)
            ).all()
            for notice in due:
                receiver = spec.receivers.get(notice.receiver)
                lease = timedelta(seconds=(receiver.timeout_s if receiver else 5.0) + 10)
                claimed = session.execute(
                    update(AlertNotification)
                    .where(
                        AlertNotification.id == notice.id,
                        AlertNotification.status == "pending",
                        AlertNotification.next_at == notice.next_at,
                    )
                    .values(next_at=now + lease, attempts=AlertNotification.attempts + 1)
                    .execution_options(synchronize_session=False)
                )
                session.commit()
                if claimed.rowcount == 1:  # type: ignore[attr-defined]
                    won.append(notice)
            session.expunge_all()  # detached copies: what this attempt is, whatever the table says next
        for notice in won:
            notice.attempts += 1
        return won

    def record(
        self, spec: AlertsSpec, notice: AlertNotification, error: str | None, now: datetime | None = None
    ) -> None:
        """What became of one attempt: sent, retried later with backoff, or given up."""
        now = now or utcnow()
        receiver = spec.receivers.get(notice.receiver)
        values: dict[str, Any]
        if error is None:
            values = {"status": "sent", "sent_at": now, "last_error": None}
        elif receiver is None or notice.attempts > receiver.retries:
            values = {"status": "failed", "last_error": error}
            log.warning(
                "alert %s %s to %s failed after %d attempts: %s",
                notice.payload.get("id"),
                notice.event,
                notice.receiver,
                notice.attempts,
                error,
            )
        else:
            wait = min(receiver.backoff_s * 2 ** (notice.attempts - 1), MAX_BACKOFF_S)
            values = {"next_at": now + timedelta(seconds=wait), "last_error": error}
        with Session(self.engine) as session, session.begin():
            session.execute(
                update(AlertNotification).where(AlertNotification.id == notice.id).values(**values)
            )

    async def deliver_due(self, spec: AlertsSpec) -> int:
        """Send every due notice this process claims; returns how many were sent."""
        notices = await asyncio.to_thread(self.claim_due, spec)
        if not notices:
            return 0
        sent = 0
        async with aiohttp.ClientSession() as http:
            for notice in notices:
                error = await self._post(http, spec, notice)
                await asyncio.to_thread(self.record, spec, notice, error)
                sent += error is None
        return sent

    async def _post(
        self, http: aiohttp.ClientSession, spec: AlertsSpec, notice: AlertNotification
    ) -> str | None:
        receiver = spec.receivers.get(notice.receiver)
        if receiver is None:
            return f"receiver {notice.receiver!r} is no longer defined in the alert rules"
        refused = receiver.egress_problems(self.egress)
        if refused:  # the host is never contacted, the secret never read
            loc, problem = refused[0]
            return f"receiver {notice.receiver!r}: {'.'.join(map(str, loc))}: {problem}"
        event = dict(notice.payload)
        if self.audit_tip is not None:
            with contextlib.suppress(OSError):
                event["audit_tip"] = self.audit_tip()
        secret = os.environ.get(receiver.secret_env, "") if receiver.secret_env else ""
        return await post_signed(
            receiver.url,
            str(event["event"]),
            orjson.dumps(event),
            secret,
            timeout_s=receiver.timeout_s,
            headers={"X-Opsgate-Delivery": f"{notice.id}", "X-Opsgate-Alert": str(event["id"])},
            session=http,
        )

    # -- reading ------------------------------------------------------------------------------------------

    def states(self) -> dict[str, Any]:
        """Every rule in force with its state (the worst of its subjects) and each subject's: for the admin
        API, the CLI and the dashboard."""
        spec, source = self.rules()
        with Session(self.engine) as session:
            rows = session.scalars(select(AlertState).order_by(AlertState.rule, AlertState.subject)).all()
            notices = list(
                session.scalars(select(AlertNotification).order_by(AlertNotification.id.desc()).limit(500))
            )
        pending = {(n.rule, n.subject, n.episode, n.event): n.status for n in notices}
        deliveries = _deliveries(notices)
        by_rule: dict[str, list[AlertState]] = {}
        for row in rows:
            by_rule.setdefault(row.rule, []).append(row)
        out = []
        for rule in spec.rules:
            subjects = [
                {
                    "subject": r.subject,
                    "state": r.state,
                    "since": as_utc(r.since).isoformat(),
                    "value": r.value,
                    "evaluated_at": as_utc(r.evaluated_at).isoformat(),
                    "episode": r.episode,
                    "notice": pending.get((r.rule, r.subject, r.episode, "firing"))
                    if r.state == FIRING
                    else None,
                    "deliveries": deliveries.get((r.rule, r.subject, r.episode), []),
                }
                for r in by_rule.get(rule.name, [])
            ]
            state = max((str(s["state"]) for s in subjects), key=RANK.__getitem__, default=OK)
            out.append(
                {
                    "name": rule.name,
                    "state": state,
                    "severity": rule.severity,
                    "metric": rule.metric,
                    "artifact": rule.artifact,
                    "condition": rule.describe(),
                    "description": rule.description,
                    "op": rule.op,
                    "threshold": rule.threshold,
                    "window_s": rule.window,
                    "for_s": rule.for_,
                    "receivers": rule.receivers,
                    "subjects": subjects,
                }
            )
        return {"rules": out, "source": source, "evaluate_every_s": spec.evaluate_every_s}

    # -- the background task ------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="opsgate-alerts")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def outbox_waiting(self) -> bool:
        """Whether any notice waits to be sent (its retry may be due before the next judgement)."""
        with Session(self.engine) as session:
            waiting = session.scalars(
                select(AlertNotification.id).where(AlertNotification.status == "pending").limit(1)
            ).first()
        return waiting is not None

    async def tick(self) -> float:
        """Judge the rules when their interval has passed, then deliver what is due. Returns how long to
        sleep: the rules' interval, or half a second while notices wait in the outbox."""
        loop = asyncio.get_running_loop()
        spec, _ = await asyncio.to_thread(self.rules)
        if loop.time() - self._last_eval >= spec.evaluate_every_s:
            self._last_eval = loop.time()
            for change in await asyncio.to_thread(self.evaluate):
                log.info(
                    "alert %s (%s): %s -> %s", change["rule"], change["subject"], change["from"], change["to"]
                )
        await self.deliver_due(spec)
        if await asyncio.to_thread(self.outbox_waiting):
            return min(spec.evaluate_every_s, 0.5)
        return spec.evaluate_every_s

    async def _loop(self) -> None:
        while True:
            pause = self._interval
            try:
                pause = await self.tick()
            except Exception as exc:  # noqa: BLE001 - one line per change of state; the next tick retries
                self.outage.failed(exc, "alert rules are not being judged until the database answers")
                await asyncio.sleep(1.0)
            else:
                self.outage.recovered()
            await asyncio.sleep(pause)


def _deliveries(notices: list[AlertNotification]) -> dict[tuple[str, str, int], list[dict[str, Any]]]:
    """The newest notice per receiver of each (rule, subject, episode): event, status, attempts, when sent.
    Receiver names only: never a url or a secret, and not the last error (it may quote a url)."""
    out: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    seen: set[tuple[str, str, int, str]] = set()
    for n in notices:  # newest first
        if (n.rule, n.subject, n.episode, n.receiver) in seen:
            continue
        seen.add((n.rule, n.subject, n.episode, n.receiver))
        out.setdefault((n.rule, n.subject, n.episode), []).append(
            {
                "receiver": n.receiver,
                "event": n.event,
                "status": n.status,
                "attempts": n.attempts,
                "sent_at": as_utc(n.sent_at).isoformat() if n.sent_at else None,
            }
        )
    for found in out.values():
        found.sort(key=lambda d: str(d["receiver"]))
    return out
