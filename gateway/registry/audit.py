"""Append-only, hash-chained, keyed and anchored audit log.

Each entry stores the hash of the previous one and its own hash over (seq, time, actor, action, target,
before, after, reason, previous hash). `verify` walks the chain and names the first entry that was edited,
deleted or moved. Sequence numbers are the primary key, so two writers racing for the same place fail
one of them instead of forking the chain; the loser retries on the new tip.

Someone who can write the database could rehash the whole chain after an edit, so the chain is keyed and
anchored outside the database (`setup`):
- each entry's `mac` is HMAC-SHA256(audit key, entry hash); the key lives outside the database
  (OPSGATE_AUDIT_KEY, or a 0600 file `audit.key` in the data directory, created on first use), so a
  rehashed entry has no valid MAC;
- each committed entry's `seq hash` is appended to `audit.anchor` in the data directory, so deleting the
  newest entries (and lowering the stored tip) or replacing an anchored entry shows;
- `verify` also replays the alias moves and checks the aliases table against them.
An install whose chain started unkeyed keeps its old entries as they were: the first keyed entry
(`audit.keyed`) covers them through its previous hash, and from the anchor's first entry on every entry
must carry a valid MAC.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson
from sqlalchemy import Engine, event, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.db.generation import as_utc, read_counter, set_counter, utcnow
from gateway.db.models import Alias, ApiKey, AuditEntry, Promotion, Rollout

T = TypeVar("T")
GENESIS = "0" * 64
TIP = "audit_tip"  # last sequence number, kept beside the chain: deleting the newest entries shows
KEY_ENV = "OPSGATE_AUDIT_KEY"
KEY_FILE = "audit.key"
ANCHOR_FILE = "audit.anchor"
_PENDING = "audit_anchor_pending"


@dataclass(frozen=True)
class Keyring:
    """The audit key and the anchor file of one engine's chain."""

    key: bytes
    anchor: Path | None = None

    def mac(self, digest: str) -> str:
        return hmac.new(self.key, digest.encode("ascii"), hashlib.sha256).hexdigest()


_KEYRINGS: weakref.WeakKeyDictionary[Engine, Keyring] = weakref.WeakKeyDictionary()


def load_key(data_dir: Path) -> bytes:
    """OPSGATE_AUDIT_KEY, else the data directory's 0600 `audit.key` (created with a random key if absent)."""
    value = os.environ.get(KEY_ENV, "").strip()
    if value:
        return value.encode("utf-8")
    path = data_dir / KEY_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it meanwhile
            pass
        else:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(secrets.token_hex(32) + "\n")
    return path.read_text(encoding="utf-8").strip().encode("utf-8")


def setup(engine: Engine, data_dir: Path, *, create: bool = True) -> Keyring | None:
    """Key and anchor this engine's audit chain (the gateway and every CLI command call it); an install
    whose chain is not keyed yet gets its `audit.keyed` entry, the point from which every entry is keyed.
    `create` False (a CLI on a machine without the data directory): without OPSGATE_AUDIT_KEY nothing is
    created and the chain is not keyed here (verify then says it cannot check keyed entries)."""
    if not create and not os.environ.get(KEY_ENV, "").strip() and not (data_dir / KEY_FILE).exists():
        return None
    anchor = data_dir / ANCHOR_FILE if data_dir.is_dir() or create else None
    ring = Keyring(load_key(data_dir), anchor)
    _KEYRINGS[engine] = ring

    def mark(session: Session) -> None:
        tip = session.execute(
            select(AuditEntry.seq, AuditEntry.mac).order_by(AuditEntry.seq.desc()).limit(1)
        ).first()
        if tip is not None and tip[1] is None:
            append(
                session,
                actor="system:audit",
                action="audit.keyed",
                target="audit",
                after={"keyed_from": tip[0] + 1},
                reason="the audit chain is keyed from here on; earlier entries are covered by this entry's hash",
            )

    write_transaction(engine, mark)
    return ring


def key_fingerprint(session: Session, key_hash: str) -> str | None:
    """What the chain records of a key's hash (`key.create`): its MAC under the audit key, so a key row
    whose hash was replaced (someone's own key value put in an admin's row) no longer matches, while the
    audit log never holds the hash itself. None where the chain is not keyed."""
    ring = _session_keyring(session)
    return ring.mac(f"api-key {key_hash}") if ring is not None else None


def keyring(engine: Engine) -> Keyring | None:
    return _KEYRINGS.get(engine)


def _session_keyring(conn: Session) -> Keyring | None:
    bind = conn.get_bind()
    engine = getattr(bind, "engine", bind)
    return _KEYRINGS.get(engine) if isinstance(engine, Engine) else None


@event.listens_for(Session, "after_commit")
def _anchor_committed(session: Session) -> None:
    """Append the committed entries to the anchor file (after the commit: a rolled-back entry is never
    anchored)."""
    pending = session.info.pop(_PENDING, None)
    if not pending:
        return
    path: Path = pending[0][0]
    lines = "".join(f"{seq} {digest}\n" for _, seq, digest in pending)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="ascii") as out:
        out.write(lines)


@event.listens_for(Session, "after_rollback")
def _forget_rolled_back(session: Session) -> None:
    session.info.pop(_PENDING, None)


def anchored(path: Path | None) -> list[tuple[int, str]]:
    """(seq, hash) lines of an anchor file, oldest first (none when it does not exist)."""
    if path is None or not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="ascii", errors="replace").splitlines():
        seq, _, digest = line.partition(" ")
        if seq.isdigit() and len(digest) == 64:
            out.append((int(seq), digest))
    return out


def anchored_tip(engine: Engine) -> dict[str, Any] | None:
    """The newest anchored entry ({"seq", "hash"}), for alert payloads; None when nothing is anchored."""
    ring = _KEYRINGS.get(engine)
    if ring is None or ring.anchor is None or not ring.anchor.exists():
        return None
    with ring.anchor.open("rb") as f:
        f.seek(max(0, ring.anchor.stat().st_size - 4096))
        lines = f.read().decode("ascii", errors="replace").splitlines()
    for line in reversed(lines):
        seq, _, digest = line.partition(" ")
        if seq.isdigit() and len(digest) == 64:
            return {"seq": int(seq), "hash": digest}
    return None


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
    ring = _session_keyring(conn)
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
            mac=ring.mac(digest) if ring is not None else None,
        )
    )
    set_counter(conn, TIP, seq)
    if ring is not None and ring.anchor is not None:
        conn.info.setdefault(_PENDING, []).append((ring.anchor, seq, digest))
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
    ring = _KEYRINGS.get(engine)
    with Session(engine) as conn:
        rows = list(conn.execute(select(AuditEntry).order_by(AuditEntry.seq)).scalars().all())
        result = verify_entries(rows, tip=read_counter(conn, TIP), ring=ring)
        if not result.ok:
            return result
        aliases = list(conn.execute(select(Alias)).scalars().all())
        keys = list(conn.execute(select(ApiKey)).scalars().all())
        pending = list(conn.execute(select(Promotion).where(Promotion.state == "pending")).scalars().all())
        live = list(conn.execute(select(Rollout).where(Rollout.live_key.is_not(None))).scalars().all())
    return (
        reconcile_aliases(rows, aliases)
        or reconcile_keys(rows, keys, ring)
        or reconcile_promotions(rows, pending)
        or reconcile_rollouts(rows, live)
        or result
    )


def verify_entries(rows: list[AuditEntry], *, tip: int = 0, ring: Keyring | None = None) -> VerifyResult:
    anchors = anchored(ring.anchor) if ring is not None else []
    keyed_from = anchors[0][0] if anchors else None
    prev_hash = GENESIS
    expected_seq = 1
    seen_mac = False
    hashes: dict[int, str] = {}
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
        if row.mac is not None:
            if ring is None:
                return VerifyResult(
                    False,
                    len(rows),
                    f"entry {row.seq} is keyed but no audit key is available: set {KEY_ENV} or run where the"
                    f" data directory's {KEY_FILE} is",
                    row.seq,
                )
            if not hmac.compare_digest(row.mac, ring.mac(row.entry_hash)):
                return VerifyResult(
                    False,
                    len(rows),
                    f"entry {row.seq} ({row.action} {row.target}) has no valid MAC: it was rewritten (and"
                    " rehashed) without the audit key",
                    row.seq,
                )
            seen_mac = True
        elif ring is not None and (seen_mac or (keyed_from is not None and row.seq >= keyed_from)):
            return VerifyResult(
                False,
                len(rows),
                f"entry {row.seq} ({row.action} {row.target}) has no MAC although the chain is keyed from"
                f" entry {keyed_from if keyed_from is not None else 'an earlier one'}: it was rewritten",
                row.seq,
            )
        hashes[row.seq] = row.entry_hash
        prev_hash = row.entry_hash
        expected_seq += 1
    if tip > len(rows):
        return VerifyResult(
            False,
            len(rows),
            f"entries {len(rows) + 1}..{tip} are missing: the newest entries were deleted",
            tip,
        )
    for seq, digest in anchors:
        if seq not in hashes:
            return VerifyResult(
                False,
                len(rows),
                f"entry {seq} is recorded in the anchor file ({ring.anchor if ring else ''}) but not in the"
                f" database, which ends at entry {len(rows)}: the newest entries were deleted",
                seq,
            )
        if hashes[seq] != digest:
            return VerifyResult(
                False,
                len(rows),
                f"entry {seq} differs from the hash the anchor file recorded when it was written: it was"
                " replaced",
                seq,
            )
    return VerifyResult(True, len(rows))


def reconcile_aliases(rows: list[AuditEntry], aliases: list[Alias]) -> VerifyResult | None:
    """The aliases table must be what the chain's alias moves (and, for `latest`, its registrations) say;
    an alias row the chain does not explain fails."""
    moved: dict[str, int] = {}
    latest: dict[str, int] = {}
    for row in rows:
        if row.action.startswith("alias.") and isinstance(row.after, dict):
            version = row.after.get("version")
            if isinstance(version, int):
                moved[row.target] = version
        elif row.action == "version.register":
            head, _, number = row.target.rpartition("@")
            if number.isdigit():
                latest[head] = max(latest.get(head, 0), int(number))
    for alias in aliases:
        target = f"{alias.kind}:{alias.name}@{alias.alias}"
        expected = latest.get(f"{alias.kind}:{alias.name}") if alias.alias == "latest" else moved.get(target)
        if expected != alias.version:
            said = f"version {expected}" if expected is not None else "nothing (it never moved there)"
            return VerifyResult(
                False,
                len(rows),
                f"alias {target} points at version {alias.version} but the audit chain says {said}: the"
                " aliases table was changed outside the chain",
                None,
            )
    return None


def reconcile_keys(rows: list[AuditEntry], keys: list[ApiKey], ring: Keyring | None) -> VerifyResult | None:
    """The keys table must be what the chain's `key.create` and `key.revoke` entries say: a key inserted,
    deleted, given other roles, principal, grants or creator, un-revoked, or whose hash was replaced fails."""
    created: dict[str, dict[str, Any]] = {}
    revoked: set[str] = set()
    for row in rows:
        if row.action == "key.create" and isinstance(row.after, dict):
            created[row.target.removeprefix("key:")] = row.after
        elif row.action == "key.revoke":
            revoked.add(row.target.removeprefix("key:"))

    def problem(message: str) -> VerifyResult:
        return VerifyResult(
            False, len(rows), f"{message}: the keys table was changed outside the chain", None
        )

    for key in keys:
        said = created.get(key.id)
        if said is None:
            return problem(
                f"key {key.id} ({key.principal}, roles {', '.join(key.roles)}) has no key.create entry"
            )
        for field in ("principal", "roles", "allow", "created_by_key"):
            if field in said and said[field] != getattr(key, field):
                return problem(
                    f"key {key.id} has {field} {getattr(key, field)!r} but the chain says {said[field]!r}"
                )
        mark = said.get("fingerprint")
        if (
            mark is not None
            and ring is not None
            and not hmac.compare_digest(str(mark), ring.mac(f"api-key {key.key_hash}"))
        ):
            return problem(
                f"key {key.id} ({key.principal}) has another key hash than the one it was created with"
            )
        if (key.revoked_at is not None) != (key.id in revoked):
            state = "revoked" if key.revoked_at is not None else "active"
            said_state = "revoked" if key.id in revoked else "active"
            return problem(f"key {key.id} ({key.principal}) is {state} but the chain says {said_state}")
    missing = sorted(set(created) - {key.id for key in keys})
    if missing:  # keys are revoked, never deleted: an empty table would let anyone create the first key
        return problem(
            f"key {missing[0]} is in the chain (key.create) but not in the database: it was deleted"
        )
    return None


def promotion_entries(session: Session, promotion: Promotion) -> list[AuditEntry]:
    """The chain's entries of one promotion's request and approvals (by target, then promotion id)."""
    rows = session.execute(
        select(AuditEntry)
        .where(AuditEntry.target == f"{promotion.kind}:{promotion.name}@{promotion.alias}")
        .where(AuditEntry.action.in_((f"{promotion.action}.request", f"{promotion.action}.approve")))
        .order_by(AuditEntry.seq)
    ).scalars()
    return [r for r in rows if isinstance(r.after, dict) and r.after.get("promotion") == promotion.id]


def promotion_problem(entries: list[AuditEntry], promotion: Promotion) -> str | None:
    """How a pending promotion's row differs from what its entries in the chain say (its version, the
    version it moves from, the rule it was filed under, who requested it, its approvals), or None."""
    requests = [e for e in entries if e.action.endswith(".request")]
    if not requests:
        return f"promotion {promotion.id} has no request entry in the audit chain"
    asked = requests[0]
    after = asked.after if isinstance(asked.after, dict) else {}
    before = asked.before if isinstance(asked.before, dict) else {}
    said = {"version": after.get("version"), "from_version": before.get("version")}
    for field in ("rule", "requested_by"):
        if field in after:
            said[field] = after[field]
    for field, value in said.items():
        if getattr(promotion, field) != value:
            return f"promotion {promotion.id} has {field} {getattr(promotion, field)!r} but the chain says {value!r}"
    approved = [e for e in entries if e.action.endswith(".approve")]
    keys = [a.get("key") for a in promotion.approvals if isinstance(a, dict)]
    recorded = [e.after.get("key") for e in approved if isinstance(e.after, dict)]
    if len(keys) != len(approved) or any(k is not None and k not in keys for k in recorded):
        return (
            f"promotion {promotion.id} lists {len(keys)} approval(s) ({', '.join(str(k) for k in keys) or 'none'})"
            f" but the chain records {len(approved)}"
        )
    return None


def reconcile_promotions(rows: list[AuditEntry], pending: list[Promotion]) -> VerifyResult | None:
    """A pending promotion must be what the chain says it is: its rule loosened, its version swapped or an
    approval added in the database would otherwise be applied by the next real approval."""
    for promotion in pending:
        entries = [
            r
            for r in rows
            if r.target == f"{promotion.kind}:{promotion.name}@{promotion.alias}"
            and r.action in (f"{promotion.action}.request", f"{promotion.action}.approve")
            and isinstance(r.after, dict)
            and r.after.get("promotion") == promotion.id
        ]
        found = promotion_problem(entries, promotion)
        if found:
            return VerifyResult(
                False, len(rows), f"{found}: the promotions table was changed outside the chain", None
            )
    return None


def reconcile_rollouts(rows: list[AuditEntry], live: list[Rollout]) -> VerifyResult | None:
    """A live rollout must be what its `rollout.start` entry says: its control and candidate versions,
    share, mode and spec (schedule, metrics): a candidate swapped or a share raised in the database would
    otherwise be served to callers."""
    started = {
        r.after.get("rollout"): r for r in rows if r.action == "rollout.start" and isinstance(r.after, dict)
    }
    for rollout in live:
        entry = started.get(rollout.id)
        target = f"{rollout.kind}:{rollout.name}@{rollout.alias}"
        found = None
        if entry is None or entry.target != target:
            found = f"rollout {rollout.id} of {target} has no rollout.start entry"
        else:
            after = entry.after if isinstance(entry.after, dict) else {}
            before = entry.before if isinstance(entry.before, dict) else {}
            said = {
                "control_version": before.get("version"),
                "candidate_version": after.get("candidate"),
                "share": after.get("share"),
            }
            said.update({k: after[k] for k in ("mode", "spec") if k in after})
            for field, value in said.items():
                if getattr(rollout, field) != value:
                    found = f"rollout {rollout.id} has {field} {getattr(rollout, field)!r} but the chain says {value!r}"
                    break
        if found:
            return VerifyResult(
                False, len(rows), f"{found}: the rollouts table was changed outside the chain", None
            )
    return None
