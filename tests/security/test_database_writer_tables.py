"""Issue 11 (9) retried on other tables: `opsgate audit verify` reconciled only the aliases table with the
chain, so a database writer (SQLite or PostgreSQL) who

- inserted an admin key row of their own, gave a key more roles, grants or another creator (which hides a
  minted approver from four-eyes), put their own key's hash into an admin's row, or un-revoked a key; or
- loosened a pending promotion's stored rule (four-eyes off, or fewer approvals), swapped its version, or
  added an approval to it, so that the next real approval applied it with a gateway-written audit entry

got a verify that passed. Verify now reconciles the keys table (`key.create`, with an HMAC fingerprint of
the key hash, and `key.revoke`) and pending promotions (their `.request` entry records the rule and the
requester; each `.approve` entry the key) with the chain, and an approval of a promotion whose row differs
from its entries is refused (409 `promotion_tampered`). Each attack is undone after its check, and the
chain verifies again. Real CLI, SQLite and PostgreSQL.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import Engine, create_engine, insert, select, text

from gateway.db.models import ApiKey
from tests.conftest import ProjectFactory
from tests.fakes.gateway import Cli, commit_project, project_cli

PROMPT = "name: hello\nmessages:\n  - {role: system, content: 'Hi, version %d.'}\n"


@dataclass
class History:
    cli: Cli
    engine: Engine
    keys: dict[str, str]  # name -> value
    ids: dict[str, str]  # name -> key id
    promotion: str

    def sql(self, *statements: str) -> None:
        with self.engine.begin() as conn:
            for statement in statements:
                conn.execute(text(statement.replace(":", "\\:")))  # literal SQL: no bind parameters

    def verify(self) -> tuple[int, str]:
        done = self.cli("audit", "verify")
        return done.returncode, "intact" if done.returncode == 0 else done.stderr


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def history(
    request: pytest.FixtureRequest,
    project_factory: ProjectFactory,
    tmp_path_factory: pytest.TempPathFactory,
    new_pg_database: Callable[[], str],
) -> Iterator[History]:
    """Keys (one revoked), two versions, and a pending promotion of version 2, written by the CLI."""
    project = project_factory(files={"prompts/hello.yaml": PROMPT % 1})
    data = tmp_path_factory.mktemp("data")
    url = new_pg_database() if request.param == "postgresql" else f"sqlite:///{data / 'opsgate.db'}"
    cli = project_cli(project, data, {"OPSGATE_DATABASE_URL": url})
    admin = cli.first_admin_key()
    assert cli("sync", key=admin).returncode == 0
    keys, ids = {"admin": admin}, {}
    for name, role in (("pe", "prompt-engineer"), ("bob", "approver"), ("gone", "approver")):
        done = cli("keys", "create", "--name", name, "--role", role, key=admin)
        assert done.returncode == 0, done.stderr
        keys[name] = done.stdout.split()[-1]
        ids[name] = done.stderr.split()[1]  # "created key_... for ..."
    assert cli("keys", "revoke", ids["gone"], key=admin).returncode == 0
    (project / "prompts" / "hello.yaml").write_text(PROMPT % 2, encoding="utf-8")
    commit_project(project, "v2")
    assert cli("sync", key=keys["pe"]).returncode == 0
    promotion = cli("promote", "prompt:hello@2", "--to", "production", key=keys["pe"]).stdout.split()[-1]
    engine = create_engine(url)
    out = History(cli, engine, keys, ids, promotion)
    assert out.verify() == (0, "intact")
    yield out
    engine.dispose()


def test_a_key_row_inserted_by_the_database_writer_is_found(history: History) -> None:
    digest = hashlib.sha256(b"sk-og-my-own-key-value-0123456789").hexdigest()
    history.sql(
        "INSERT INTO api_keys (id, key_hash, prefix, name, principal, roles, allow, created_at, created_by,"
        f" revoked_at, revoked_by, created_by_key) VALUES ('key_000000000001', '{digest}', 'sk-og-my-o',"
        " 'ops', 'ops@example.com', '[\"admin\"]', '[\"*\"]', '2026-01-01 00:00:00', 'x', NULL, NULL, NULL)"
    )
    code, problem = history.verify()
    history.sql("DELETE FROM api_keys WHERE id = 'key_000000000001'")
    assert code == 1 and "key_000000000001" in problem and "no key.create entry" in problem, problem
    assert history.verify() == (0, "intact")


@pytest.mark.parametrize(
    ("column", "value", "undo"),
    [
        ("roles", "'[\"admin\"]'", "'[\"prompt-engineer\"]'"),
        ("allow", '\'["*", "model:*@*"]\'', "'[\"*\"]'"),
        ("principal", "'someone-else@example.com'", "'pe'"),
        ("created_by_key", "NULL", None),
    ],
)
def test_a_key_changed_behind_the_chain_is_found(
    history: History, column: str, value: str, undo: str | None
) -> None:
    key = history.ids["pe"]
    with history.engine.connect() as conn:
        old = conn.execute(text(f"SELECT {column} FROM api_keys WHERE id = '{key}'")).scalar_one()
    history.sql(f"UPDATE api_keys SET {column} = {value} WHERE id = '{key}'")
    code, problem = history.verify()
    history.sql(f"UPDATE api_keys SET {column} = {undo or repr(old)} WHERE id = '{key}'")
    assert code == 1 and key in problem and column in problem, problem
    assert history.verify() == (0, "intact")


def test_a_deleted_key_row_is_found(history: History) -> None:
    """Keys are revoked, never deleted; an emptied key table would also reopen the first-key bootstrap."""
    key = history.ids["gone"]
    with history.engine.connect() as conn:
        table = ApiKey.__table__
        row = conn.execute(select(table).where(table.c.id == key)).mappings().one()  # typed, to put back
    history.sql(f"DELETE FROM api_keys WHERE id = '{key}'")
    code, problem = history.verify()
    with history.engine.begin() as conn:  # put it back, typed (JSON columns)
        conn.execute(insert(ApiKey.__table__).values(**dict(row)))
    assert code == 1 and key in problem and "deleted" in problem, problem
    assert history.verify() == (0, "intact")


def test_an_admin_keys_hash_replaced_is_found(history: History) -> None:
    admin_id = history.cli("keys", "list", "--json", key=history.keys["admin"]).stdout.split('"id":"')[1][:16]
    with history.engine.connect() as conn:
        old = conn.execute(text(f"SELECT key_hash FROM api_keys WHERE id = '{admin_id}'")).scalar_one()
    mine = hashlib.sha256(b"sk-og-the-writers-own-key-000000").hexdigest()
    history.sql(f"UPDATE api_keys SET key_hash = '{mine}' WHERE id = '{admin_id}'")
    code, problem = history.verify()
    history.sql(f"UPDATE api_keys SET key_hash = '{old}' WHERE id = '{admin_id}'")
    assert code == 1 and admin_id in problem and "key hash" in problem, problem
    assert history.verify() == (0, "intact")


def test_a_revoked_key_brought_back_is_found(history: History) -> None:
    key = history.ids["gone"]
    with history.engine.connect() as conn:
        old = conn.execute(text(f"SELECT revoked_at FROM api_keys WHERE id = '{key}'")).scalar_one()
    history.sql(f"UPDATE api_keys SET revoked_at = NULL WHERE id = '{key}'")
    code, problem = history.verify()
    history.sql(f"UPDATE api_keys SET revoked_at = '{old}' WHERE id = '{key}'")
    assert code == 1 and key in problem and "active but the chain says revoked" in problem, problem
    assert history.verify() == (0, "intact")


def test_a_pending_promotion_loosened_in_the_database_is_found_and_not_applied(history: History) -> None:
    pid = history.promotion
    with history.engine.connect() as conn:
        old = conn.execute(text(f"SELECT rule FROM promotions WHERE id = '{pid}'")).scalar_one()
    rule = '{"approvals": 1, "approver_roles": ["prompt-engineer", "approver", "admin"], "four_eyes": false}'
    history.sql(f"UPDATE promotions SET rule = '{rule}' WHERE id = '{pid}'")
    code, problem = history.verify()
    assert code == 1 and pid in problem and "rule" in problem, problem
    # the requester approves her own request under the loosened rule: refused
    own = history.cli("approve", pid, key=history.keys["pe"])
    assert own.returncode != 0 and "changed outside the audit chain" in own.stderr, own.stdout + own.stderr
    restore = old if isinstance(old, str) else __import__("json").dumps(old)
    history.sql(f"UPDATE promotions SET rule = '{restore}' WHERE id = '{pid}'")
    assert history.verify() == (0, "intact")


@pytest.mark.parametrize(
    ("change", "undo"),
    [
        ("version = 1", "version = 2"),
        (
            'approvals = \'[{"by": "carol@example.com", "key": "key_000000000002", "at": "x", "comment": null}]\'',
            "approvals = '[]'",
        ),
    ],
)
def test_a_pending_promotion_swapped_or_pre_approved_is_found(
    history: History, change: str, undo: str
) -> None:
    pid = history.promotion
    history.sql(f"UPDATE promotions SET {change} WHERE id = '{pid}'")
    code, problem = history.verify()
    history.sql(f"UPDATE promotions SET {undo} WHERE id = '{pid}'")
    assert code == 1 and pid in problem, problem
    assert history.verify() == (0, "intact")
