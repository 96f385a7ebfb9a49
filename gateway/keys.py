"""API keys: stored as sha256 hashes, never logged; each names a principal, roles and what it may call.

Keys are random 256-bit tokens, so a plain sha256 is a safe verifier (no password stretching needed) and
lets the gateway look a key up in an in-memory dict with no database read on the request path.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine, insert, or_, select, update
from sqlalchemy.orm import Session

from gateway.db.generation import as_utc, bump_generation, utcnow
from gateway.db.models import ApiKey
from gateway.errors import Conflict, InvalidRequest, NotFound
from gateway.principals import mixed_scripts, normalise
from gateway.registry import audit

ROLES = ("app", "prompt-engineer", "approver", "admin", "metrics")  # metrics: reads /metrics, nothing else
KEY_PREFIX = "sk-og-"
ADMIN_KEY_FILE = "admin.key"


def hash_key(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def new_key_value() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: what the request path needs to know about a key, cached in memory."""

    key_id: str
    name: str
    principal: str
    roles: frozenset[str]
    allow: tuple[str, ...]

    def has_role(self, *roles: str) -> bool:
        return "admin" in self.roles or any(r in self.roles for r in roles)

    def may_call(self, kind: str, name: str) -> bool:
        """Whether an allow pattern covers the artifact (a pattern's `@selector` grants versions: see
        gateway.flow.access)."""
        target = f"{kind}:{name}"
        patterns = (p.split("@", 1)[0] for p in self.allow)
        return any(fnmatch.fnmatchcase(target, p) or fnmatch.fnmatchcase(name, p) for p in patterns)

    @property
    def actor(self) -> str:
        return f"{self.principal} (key {self.key_id})"


@dataclass(frozen=True)
class KeyRecord:
    id: str
    prefix: str
    name: str
    principal: str
    roles: list[str]
    allow: list[str]
    created_at: datetime
    created_by: str
    revoked_at: datetime | None
    created_by_key: str | None = None


def _record(row: ApiKey) -> KeyRecord:
    return KeyRecord(
        row.id,
        row.prefix,
        row.name,
        row.principal,
        list(row.roles),
        list(row.allow),
        as_utc(row.created_at),
        row.created_by,
        as_utc(row.revoked_at) if row.revoked_at else None,
        row.created_by_key,
    )


def validate_roles(roles: Iterable[str]) -> list[str]:
    out = sorted(set(roles))
    if not out:
        raise InvalidRequest(f"a key needs at least one role ({', '.join(ROLES)})", param="role")
    unknown = [r for r in out if r not in ROLES]
    if unknown:
        raise InvalidRequest(
            f"unknown role {unknown[0]!r}; roles are: {', '.join(ROLES)}", param="role", code="unknown_role"
        )
    return out


def key_creators(session: Session, key_id: str) -> list[tuple[str, str]]:
    """(key id, normalised principal) of the keys that created `key_id`, nearest first (its creator, the
    creator's creator, ...), read in the caller's session."""
    out: list[tuple[str, str]] = []
    seen = {key_id}
    current = session.get(ApiKey, key_id)
    while current is not None and current.created_by_key and current.created_by_key not in seen:
        seen.add(current.created_by_key)
        current = session.get(ApiKey, current.created_by_key)
        if current is not None:
            out.append((current.id, normalise(current.principal)))
    return out


class KeyService:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(
        self,
        *,
        name: str,
        roles: Iterable[str],
        actor: str,
        principal: str | None = None,
        allow: Iterable[str] = ("*",),
        value: str | None = None,
        created_by_key: str | None = None,
    ) -> tuple[KeyRecord, str]:
        """Create (or import, when `value` is given) a key. Returns the record and the plaintext key.

        The principal is stored normalised (gateway/principals.py); `created_by_key` is the key that
        created this one (four-eyes does not count an approval by a key the requester created)."""
        role_list = validate_roles(roles)
        who = normalise(principal or name)
        if not who:
            raise InvalidRequest(
                f"principal {principal or name!r} is empty once normalised; name a person or a service",
                param="principal",
            )
        scripts = mixed_scripts(who)
        if scripts:
            raise InvalidRequest(
                f"principal {who!r} mixes letters of {' and '.join(scripts)}, which look alike: one person"
                " could hold keys under two spellings that four-eyes cannot tell apart; spell it in one script",
                param="principal",
                code="mixed_scripts",
            )
        if value is not None and len(value) < 16:
            raise InvalidRequest("an imported key must be at least 16 characters long", param="key")
        plaintext = value or new_key_value()
        digest = hash_key(plaintext)
        row = ApiKey(
            id="key_" + secrets.token_hex(6),
            key_hash=digest,
            prefix=plaintext[:10],
            name=name,
            principal=who,
            roles=role_list,
            allow=list(allow) or ["*"],
            created_at=utcnow(),
            created_by=actor,
            revoked_at=None,
            revoked_by=None,
            created_by_key=created_by_key,
        )

        def write(conn: Session) -> None:
            exists = conn.execute(select(ApiKey.id).where(ApiKey.key_hash == digest)).first()
            if exists:
                raise Conflict(f"this key is already registered (as {exists[0]})", code="key_exists")
            conn.execute(
                insert(ApiKey).values({c.name: getattr(row, c.key) for c in ApiKey.__table__.columns})
            )
            audit.append(
                conn,
                actor=actor,
                action="key.create",
                target=f"key:{row.id}",
                after={
                    "name": name,
                    "principal": row.principal,
                    "roles": role_list,
                    "allow": row.allow,
                    "created_by_key": created_by_key,
                    "fingerprint": audit.key_fingerprint(conn, digest),
                },
            )
            bump_generation(conn)

        audit.write_transaction(self.engine, write)
        return _record(row), plaintext

    def list(self, *, include_revoked: bool = False) -> list[KeyRecord]:
        with Session(self.engine) as conn:
            query = select(ApiKey).order_by(ApiKey.created_at)
            if not include_revoked:
                query = query.where(ApiKey.revoked_at.is_(None))
            return [_record(r) for r in conn.execute(query).scalars()]

    def revoke(self, ident: str, *, actor: str) -> KeyRecord:
        def write(conn: Session) -> KeyRecord:
            rows = (
                conn.execute(select(ApiKey).where(or_(ApiKey.id == ident, ApiKey.prefix == ident)))
                .scalars()
                .all()
            )
            if not rows:
                raise NotFound(f"no key with id or prefix {ident!r} (see `opsgate keys list`)")
            if len(rows) > 1:
                raise Conflict(f"{ident!r} matches {len(rows)} keys; give the key id")
            row = rows[0]
            if row.revoked_at is not None:
                raise Conflict(f"key {row.id} is already revoked", code="already_revoked")
            now = utcnow()
            conn.execute(update(ApiKey).where(ApiKey.id == row.id).values(revoked_at=now, revoked_by=actor))
            audit.append(
                conn,
                actor=actor,
                action="key.revoke",
                target=f"key:{row.id}",
                before={"revoked": False},
                after={"revoked": True},
            )
            bump_generation(conn)
            row.revoked_at = now
            return _record(row)

        return audit.write_transaction(self.engine, write)

    def active_principals(self) -> dict[str, Principal]:
        """key hash -> Principal, for the in-memory cache of a gateway."""
        with Session(self.engine) as conn:
            rows = conn.execute(select(ApiKey).where(ApiKey.revoked_at.is_(None))).scalars()
            return {
                r.key_hash: Principal(
                    r.id, r.name, normalise(r.principal) or r.principal, frozenset(r.roles), tuple(r.allow)
                )
                for r in rows
            }

    def ensure_bootstrap_admin(self, data_dir: Path) -> Path | None:
        """On first start (no active key at all), create an admin key and write it to a 0600 file."""
        if self.list():
            return None
        _, plaintext = self.create(name="bootstrap-admin", roles=["admin"], actor="system:bootstrap")
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / ADMIN_KEY_FILE
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(plaintext + "\n")
        return path
