"""The traffic store's table on SQLite and PostgreSQL: retention, size limit, owner scoping, deletion."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from gateway.db.engine import make_engine, migrate
from gateway.db.generation import utcnow
from gateway.db.models import TrafficCall, TrafficPayload
from gateway.keys import Principal
from gateway.traffic.config import TrafficConfig
from gateway.traffic.redact import redact_payload
from gateway.traffic.store import PayloadTooLarge, StoredCall, TrafficStore

ALICE = Principal("k1", "alice", "app:alice", frozenset({"app"}), ("*",))
BOB = Principal("k2", "bob", "app:bob", frozenset({"app"}), ("*",))
ADMIN = Principal("k3", "root", "user:root", frozenset({"admin"}), ("*",))


@pytest.fixture
def store(db_url: str) -> TrafficStore:
    engine = make_engine(db_url)
    migrate(engine)
    with engine.begin() as conn:  # the module's database is shared by its tests
        conn.execute(TrafficPayload.__table__.delete())
        conn.execute(TrafficCall.__table__.delete())
    return TrafficStore(engine, TrafficConfig(retention_days=1, inline_max_bytes=100, max_payload_bytes=5000))


def call(call_id: str, *, days_ago: float = 0, size: int = 10, owner: str = "app:alice") -> StoredCall:
    return StoredCall(
        call_id, "req_" + call_id, "chat.completion", utcnow() - timedelta(days=days_ago), owner, "k1",
        "m", {}, {"response": {"text": "x" * size}},
    )  # fmt: skip


def count(store: TrafficStore, table: type) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_retention_hides_then_purge_deletes(store: TrafficStore) -> None:
    assert store.save(call("old", days_ago=2, size=500))  # large: payload row too
    assert store.save(call("new"))
    assert store.get(ALICE, "old", "chat.completion") is None  # past retention: never served
    assert [c.id for c in store.list(ALICE, "chat.completion").items] == ["new"]
    assert store.purge_expired() == 1
    assert count(store, TrafficCall) == 1 and count(store, TrafficPayload) == 0


def test_size_limit_refuses_without_partial_write(store: TrafficStore) -> None:
    assert not store.save(call("huge", size=6000))
    assert count(store, TrafficCall) == 0 and count(store, TrafficPayload) == 0


def test_owner_scoping_and_admin(store: TrafficStore) -> None:
    store.save(call("a1"))
    store.save(call("b1", owner="app:bob"))
    assert store.get(BOB, "a1", "chat.completion") is None
    assert not store.delete(BOB, "a1", "chat.completion")
    assert store.update_metadata(BOB, "a1", "chat.completion", {"k": "v"}) is None
    assert [c.id for c in store.list(BOB, "chat.completion").items] == ["b1"]
    assert store.list(BOB, "chat.completion", after="a1").items == []  # another's id is no cursor
    assert [c.id for c in store.list(ADMIN, "chat.completion").items] == ["a1", "b1"]
    assert store.get(ALICE, "a1", "response") is None  # kinds do not mix


def test_large_payload_round_trips_through_payload_row(store: TrafficStore) -> None:
    store.save(call("big", size=3000))
    got = store.get(ALICE, "big", "chat.completion")
    assert got is not None and got.payload == {"response": {"text": "x" * 3000}}
    with store.engine.connect() as conn:
        assert conn.execute(select(TrafficCall.payload).where(TrafficCall.id == "big")).scalar_one() is None


def test_change_payload_moves_between_inline_and_payload_row(store: TrafficStore) -> None:
    """Conversations grow and shrink in place: each change is whole, in the index row or the payload row."""
    store.save(call("conv", size=10))
    grown = store.change_payload(
        ALICE, "conv", "chat.completion", lambda p: {"response": {"text": "y" * 3000}}
    )
    assert grown is not None and grown.payload == {"response": {"text": "y" * 3000}}
    assert count(store, TrafficPayload) == 1
    shrunk = store.change_payload(ALICE, "conv", "chat.completion", lambda p: {"response": {"text": "z"}})
    assert shrunk is not None and count(store, TrafficPayload) == 0
    with pytest.raises(PayloadTooLarge):
        store.change_payload(ALICE, "conv", "chat.completion", lambda p: {"response": {"text": "w" * 6000}})
    got = store.get(ALICE, "conv", "chat.completion")
    assert got is not None and got.payload == {"response": {"text": "z"}}  # the refused change left nothing
    assert store.change_payload(BOB, "conv", "chat.completion", lambda p: {}) is None  # not bob's
    assert store.by_request("req_conv") is not None


def test_a_conversation_is_not_the_call_of_its_request(store: TrafficStore) -> None:
    conversation = call("conv_1")
    conversation.kind = "conversation"
    store.save(conversation)
    assert store.by_request("req_conv_1") is None  # replay and datasets read calls only


def test_redaction_walks_every_string() -> None:
    data = {"messages": [{"role": "user", "content": [{"type": "text", "text": "call +44 20 7946 0958"}]}]}
    out = redact_payload(data)
    assert out["messages"][0]["content"][0]["text"] == "call [REDACTED:PHONE]"
    assert data["messages"][0]["content"][0]["text"] == "call +44 20 7946 0958"  # a copy
