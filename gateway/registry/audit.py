"""Append-only, hash-chained audit log.

Each entry stores the hash of the previous one and its own hash over (seq, time, actor, action, target,
before, after, reason, previous hash). `verify` walks the chain and names the first entry that was edited,
deleted or moved. Sequence numbers are the primary key, so two writers racing for the same place fail
one of them instead of forking the chain; the loser retries on the new tip.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.db.generation import as_utc, read_counter, set_counter, utcnow
from gateway.db.models import AuditEntry

T = TypeVar("T")
GENESIS = "0" * 64
TIP = "audit_tip"  # last sequence number, kept beside the chain: deleting the newest entries shows


def entry_digest(
    *,
    seq: int,
    ts_iso: str,
    actor: str,
    action: str,
    target: str,
    before: Any,
    after: Any,
    reason: str | None,
    prev_hash: str,
) -> str:
    body = {
        "seq": seq,
        "ts": ts_iso,
        "actor": actor,
        "action": action,
        "target": target,
        "before": before,
        "after": after,
        "reason": reason,
        "prev": prev_hash,
    }
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _ts_iso(entry: AuditEntry) -> str:
    return as_utc(entry.ts).isoformat(timespec="microseconds")


def append(
    conn: Session,
    *,
    actor: str,
    action: str,
    target: str,
    before: Any = None,
    after: Any = None,
    reason: str | None = None,
) -> int:
    """Append one entry inside the caller's transaction (so the change and its audit commit together)."""
    tip = conn.execute(
        select(AuditEntry.seq, AuditEntry.entry_hash).order_by(AuditEntry.seq.desc()).limit(1)
    ).first()
    seq = (tip[0] + 1) if tip else 1
    prev = tip[1] if tip else GENESIS
    now = utcnow()
    ts_iso = now.isoformat(timespec="microseconds")
    digest = entry_digest(
        seq=seq,
        ts_iso=ts_iso,
        actor=actor,
        action=action,
        target=target,
        before=before,
        after=after,
        reason=reason,
        prev_hash=prev,
    )
    conn.execute(
        insert(AuditEntry).values(
            seq=seq,
            ts=now,
            actor=actor,
            action=action,
            target=target,
            before=before,
            after=after,
            reason=reason,
            prev_hash=prev,
            entry_hash=digest,
        )
    )
    set_counter(conn, TIP, seq)
    return seq


def write_transaction(engine: Engine, work: Callable[[Session], T], *, attempts: int = 8) -> T:
    """Run `work` in one transaction; if another writer took our place in the audit chain, run it again.

    The change and its audit entry commit together or not at all.
    """
    for attempt in range(attempts):
        try:
            with Session(engine) as session, session.begin():
                return work(session)
        except IntegrityError as exc:
            if not _is_chain_race(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.005 * (attempt + 1))
    raise AssertionError("unreachable")


def _is_chain_race(exc: IntegrityError) -> bool:
    text = str(exc.orig).lower()
    return "audit_log" in text or "gateway_state" in text


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    entries: int
    problem: str | None = None
    seq: int | None = None


def verify(engine: Engine) -> VerifyResult:
    with Session(engine) as conn:
        rows = conn.execute(select(AuditEntry).order_by(AuditEntry.seq)).scalars().all()
        return verify_entries(list(rows), tip=read_counter(conn, TIP))


def verify_entries(rows: list[AuditEntry], *, tip: int = 0) -> VerifyResult:
    prev_hash = GENESIS
    expected_seq = 1
    for row in rows:
        if row.seq != expected_seq:
            return VerifyResult(
                False,
                len(rows),
                f"entry {expected_seq} is missing (next present entry is {row.seq}): deleted",
                expected_seq,
            )
        if row.prev_hash != prev_hash:
            return VerifyResult(
                False,
                len(rows),
                f"entry {row.seq} ({row.action} {row.target}) does not follow entry {row.seq - 1}:"
                " entries were deleted, reordered or replaced",
                row.seq,
            )
        digest = entry_digest(
            seq=row.seq,
            ts_iso=_ts_iso(row),
            actor=row.actor,
            action=row.action,
            target=row.target,
            before=row.before,
            after=row.after,
            reason=row.reason,
            prev_hash=row.prev_hash,
        )
        if digest != row.entry_hash:
            return VerifyResult(
                False,
                len(rows),
                f"entry {row.seq} ({row.action} {row.target}) was edited: its content no longer matches"
                " its hash",
                row.seq,
            )
        prev_hash = row.entry_hash
        expected_seq += 1
    if tip > len(rows):
        return VerifyResult(
            False,
            len(rows),
            f"entries {len(rows) + 1}..{tip} are missing: the newest entries were deleted",
            tip,
        )
    return VerifyResult(True, len(rows))
