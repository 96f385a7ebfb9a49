"""The traffic store's table: save, read (owner or admin only), list with cursors, update, delete, purge.

Every read is scoped to who asks: a call belongs to the principal whose key made it, and any other
principal (unless an admin) gets "not found", exactly as for an id that never existed. Payloads are
redacted before they get here (gateway/traffic/redact.py). Blocking (SQLAlchemy): callers on the event
loop use threads.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import orjson
from sqlalchemy import Engine, Select, delete, insert, select, update

from gateway.db.generation import utcnow
from gateway.db.models import TrafficCall, TrafficPayload
from gateway.keys import Principal
from gateway.traffic.config import TrafficConfig

Order = Literal["asc", "desc"]
_SCAN_BATCH = 200


@dataclass(slots=True)
class StoredCall:
    id: str
    request_id: str
    kind: str
    created_at: datetime
    principal: str
    key_id: str | None
    model: str | None
    metadata: dict[str, str]
    payload: dict[str, Any]  # {"request": caller body, "upstream": body sent, "response": answer, ...}


class PayloadTooLarge(Exception):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"{size} bytes is over traffic.max_payload_bytes ({limit})")
        self.size = size
        self.limit = limit


@dataclass(slots=True)
class Page:
    items: list[StoredCall]
    has_more: bool


class TrafficStore:
    def __init__(self, engine: Engine, config: TrafficConfig) -> None:
        self.engine = engine
        self.config = config

    # -- writing -----------------------------------------------------------------------------------------

    def encoded_size(self, payload: Mapping[str, Any]) -> int:
        return len(orjson.dumps(payload))

    def save(self, call: StoredCall) -> bool:
        """Store one call; False (nothing written) when its payload is over `max_payload_bytes`."""
        raw = orjson.dumps(call.payload)
        if len(raw) > self.config.max_payload_bytes:
            return False
        inline = len(raw) <= self.config.inline_max_bytes
        row = {
            "id": call.id,
            "request_id": call.request_id,
            "kind": call.kind,
            "created_at": call.created_at,
            "expires_at": call.created_at + timedelta(days=self.config.retention_days),
            "principal": call.principal,
            "key_id": call.key_id,
            "model": (call.model or "")[:300] or None,
            "metadata": dict(call.metadata),
            "size_bytes": len(raw),
            "payload": call.payload if inline else None,
        }
        with self.engine.begin() as conn:
            conn.execute(insert(TrafficCall), [row])
            if not inline:
                conn.execute(insert(TrafficPayload), [{"call_id": call.id, "data": zlib.compress(raw, 6)}])
        return True

    # -- reading -----------------------------------------------------------------------------------------

    def get(self, who: Principal, call_id: str, kind: str) -> StoredCall | None:
        if _unstorable(call_id):
            return None
        query = self._visible(who, kind).where(TrafficCall.id == call_id)
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
            return self._load(conn, row) if row is not None else None

    def by_request(self, request_id: str) -> StoredCall | None:
        """The stored call of a request-log row, for the operator's tools (replay, datasets): no owner check."""
        query = select(TrafficCall).where(
            TrafficCall.request_id == request_id,
            TrafficCall.expires_at > utcnow(),
            TrafficCall.kind != "conversation",  # a record the request made, not the call itself
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
            return self._load(conn, row) if row is not None else None

    def list(
        self,
        who: Principal,
        kind: str,
        *,
        model: str | None = None,
        metadata: Mapping[str, str] | None = None,
        after: str | None = None,
        limit: int = 20,
        order: Order = "asc",
    ) -> Page:
        """A page of `who`'s calls (all calls for an admin), oldest first unless `order="desc"`, starting
        after the call `after` (a cursor that is not one of the visible calls gives an empty page)."""
        if _unstorable(model, after):
            return Page([], False)
        query = self._visible(who, kind)
        if model is not None:
            query = query.where(TrafficCall.model == model)
        found: list[StoredCall] = []
        with self.engine.connect() as conn:
            if after is not None:
                cursor = (
                    conn.execute(self._visible(who, kind).where(TrafficCall.id == after)).mappings().first()
                )
                if cursor is None:
                    return Page([], False)
                query = query.where(
                    TrafficCall.seq > cursor["seq"] if order == "asc" else TrafficCall.seq < cursor["seq"]
                )
            query = query.order_by(TrafficCall.seq.asc() if order == "asc" else TrafficCall.seq.desc())
            for row in _scan(conn, query):
                if metadata and any((row["metadata"] or {}).get(k) != v for k, v in metadata.items()):
                    continue
                if len(found) == limit:
                    return Page(found, True)
                found.append(self._load(conn, row))
        return Page(found, False)

    def _visible(self, who: Principal, kind: str) -> Select[TrafficCall]:
        query = select(TrafficCall).where(TrafficCall.kind == kind, TrafficCall.expires_at > utcnow())
        if "admin" not in who.roles:
            query = query.where(TrafficCall.principal == who.principal)
        return query

    def _load(self, conn: Any, row: Any) -> StoredCall:
        payload = row["payload"]
        if payload is None:
            data = conn.execute(
                select(TrafficPayload.data).where(TrafficPayload.call_id == row["id"])
            ).scalar_one_or_none()
            payload = orjson.loads(zlib.decompress(data)) if data is not None else {}
        return StoredCall(
            row["id"], row["request_id"], row["kind"], row["created_at"], row["principal"], row["key_id"],
            row["model"], dict(row["metadata"] or {}), payload,
        )  # fmt: skip

    # -- changing ----------------------------------------------------------------------------------------

    def update_metadata(
        self, who: Principal, call_id: str, kind: str, metadata: dict[str, str]
    ) -> StoredCall | None:
        if self.get(who, call_id, kind) is None:
            return None
        with self.engine.begin() as conn:
            conn.execute(update(TrafficCall).where(TrafficCall.id == call_id).values({"metadata": metadata}))
        return self.get(who, call_id, kind)

    def change_payload(
        self, who: Principal, call_id: str, kind: str, change: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> StoredCall | None:
        """Replace a record's payload with `change(payload)` in one transaction (the row is locked where the
        database can: two changes of one record do not lose each other's); its retention starts again.
        None when `who` cannot see such a record; `PayloadTooLarge` when the new payload is over
        `max_payload_bytes` (nothing changes)."""
        if _unstorable(call_id):
            return None
        query = self._visible(who, kind).where(TrafficCall.id == call_id).with_for_update()
        with self.engine.begin() as conn:
            row = conn.execute(query).mappings().first()
            if row is None:
                return None
            stored = self._load(conn, row)
            stored.payload = change(stored.payload)
            raw = orjson.dumps(stored.payload)
            if len(raw) > self.config.max_payload_bytes:
                raise PayloadTooLarge(len(raw), self.config.max_payload_bytes)
            inline = len(raw) <= self.config.inline_max_bytes
            values = {
                "payload": stored.payload if inline else None,
                "size_bytes": len(raw),
                "expires_at": utcnow() + timedelta(days=self.config.retention_days),
            }
            conn.execute(update(TrafficCall).where(TrafficCall.id == call_id).values(values))
            conn.execute(delete(TrafficPayload).where(TrafficPayload.call_id == call_id))
            if not inline:
                conn.execute(insert(TrafficPayload), [{"call_id": call_id, "data": zlib.compress(raw, 6)}])
        return stored

    def delete(self, who: Principal, call_id: str, kind: str) -> bool:
        """Delete the call and its payload for good; False when `who` cannot see such a call."""
        if self.get(who, call_id, kind) is None:
            return False
        with self.engine.begin() as conn:
            conn.execute(delete(TrafficPayload).where(TrafficPayload.call_id == call_id))
            conn.execute(delete(TrafficCall).where(TrafficCall.id == call_id))
        return True

    def purge_expired(self, now: datetime | None = None) -> int:
        """Delete every call past its retention, payloads first. Returns how many calls went."""
        now = now or utcnow()
        with self.engine.begin() as conn:
            ids = list(conn.execute(select(TrafficCall.id).where(TrafficCall.expires_at <= now)).scalars())
            for start in range(0, len(ids), 500):
                batch = ids[start : start + 500]
                conn.execute(delete(TrafficPayload).where(TrafficPayload.call_id.in_(batch)))
                conn.execute(delete(TrafficCall).where(TrafficCall.id.in_(batch)))
        return len(ids)


def _scan(conn: Any, query: Select[TrafficCall]) -> Iterator[Any]:
    offset = 0
    while True:
        rows = list(conn.execute(query.limit(_SCAN_BATCH).offset(offset)).mappings())
        yield from rows
        if len(rows) < _SCAN_BATCH:
            return
        offset += _SCAN_BATCH


def _unstorable(*values: str | None) -> bool:
    """A caller's id, cursor or filter holding NUL: no stored value can match it (PostgreSQL refuses it in
    text, so it is never sent: the answer is "not found", as for any id that never existed)."""
    return any(value is not None and "\x00" in value for value in values)
