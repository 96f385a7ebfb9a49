"""Issue 11, finding 9: the audit chain was an unkeyed sha256 chain inside the database, so someone with
write access to the database could edit an entry and rehash the rest, or delete the newest entries and
lower the stored tip, or move an alias behind the chain's back, and `opsgate audit verify` still passed.
The chain is now keyed (HMAC with a key outside the database) and anchored (each entry's hash appended to a
file in the data directory), and verify reconciles the aliases table with the chain. Each attack below is
done as an attacker with the database would do it, then checked with the real `opsgate audit verify`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from gateway.db.generation import as_utc
from gateway.registry.audit import entry_digest
from tests.conftest import ProjectFactory
from tests.fakes.gateway import Cli, commit_project, project_cli

PROMPT = "name: hello\nmessages:\n  - {role: system, content: 'Hi, version %d.'}\n"


@pytest.fixture(scope="module")
def written(project_factory: ProjectFactory, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    """Keys, two registrations, a promotion with its approval: a dozen entries written by the CLI."""
    project = project_factory(files={"prompts/hello.yaml": PROMPT % 1})
    cli = project_cli(project, tmp_path_factory.mktemp("data"))
    admin = cli.first_admin_key()
    assert cli("sync", key=admin).returncode == 0  # the bootstrap: production -> 1
    engineer = cli("keys", "create", "--name", "pe", "--role", "prompt-engineer", key=admin).stdout.split()[
        -1
    ]
    approver = cli("keys", "create", "--name", "bob", "--role", "approver", key=admin).stdout.split()[-1]
    (project / "prompts" / "hello.yaml").write_text(PROMPT % 2, encoding="utf-8")
    commit_project(project, "v2")
    assert cli("sync", key=engineer).returncode == 0
    promoted = cli("promote", "prompt:hello@2", "--to", "production", key=engineer)
    pid = promoted.stdout.split()[-1]
    done = cli("approve", pid, key=approver)
    assert done.returncode == 0, done.stderr
    assert verify(cli) == (0, "intact")
    return cli


@pytest.fixture
def history(written: Cli, tmp_path: Path) -> Cli:
    """A copy of the written history (database, audit key, anchor) to attack."""
    data = tmp_path / "data"
    shutil.copytree(written.data_dir, data)
    return project_cli(written.project, data)


def verify(cli: Cli) -> tuple[int, str]:
    done = cli("audit", "verify")
    return done.returncode, "intact" if done.returncode == 0 else done.stderr


def db(cli: Cli):  # type: ignore[no-untyped-def]
    return create_engine(f"sqlite:///{cli.data_dir / 'opsgate.db'}")


def rehash_from(conn, seq: int) -> None:  # type: ignore[no-untyped-def]
    """Recompute every entry hash from `seq` on, as an attacker who knows the (public) hash rule would."""
    rows = conn.execute(text("SELECT * FROM audit_log ORDER BY seq")).mappings().all()
    prev = rows[seq - 2]["entry_hash"] if seq > 1 else "0" * 64
    import json

    for row in rows[seq - 1 :]:

        def load(v):  # type: ignore[no-untyped-def]
            return json.loads(v) if isinstance(v, str) else v

        from datetime import datetime

        ts = row["ts"] if not isinstance(row["ts"], str) else datetime.fromisoformat(row["ts"])
        digest = entry_digest(
            seq=row["seq"],
            ts_iso=as_utc(ts).isoformat(timespec="microseconds"),
            actor=row["actor"],
            action=row["action"],
            target=row["target"],
            before=load(row["before"]),
            after=load(row["after"]),
            reason=row["reason"],
            prev_hash=prev,
        )
        conn.execute(
            text("UPDATE audit_log SET prev_hash = :p, entry_hash = :h WHERE seq = :s"),
            {"p": prev, "h": digest, "s": row["seq"]},
        )
        prev = digest


def test_edit_and_rehash_is_found(history: Cli) -> None:
    cli = history
    with db(cli).begin() as conn:
        seq = conn.execute(text("SELECT seq FROM audit_log WHERE action = 'promote.approve'")).scalar_one()
        conn.execute(text("UPDATE audit_log SET actor = 'someone-else' WHERE seq = :s"), {"s": seq})
        rehash_from(conn, seq)
    code, problem = verify(cli)
    assert code == 1 and f"entry {seq}" in problem and "MAC" in problem


def test_edit_and_rehash_with_the_macs_removed_is_found(history: Cli) -> None:
    cli = history
    with db(cli).begin() as conn:
        conn.execute(text("UPDATE audit_log SET actor = 'someone-else', mac = NULL"))
        rehash_from(conn, 1)
    code, problem = verify(cli)
    assert code == 1 and "no MAC" in problem


def test_tail_truncation_with_the_tip_lowered_is_found(history: Cli) -> None:
    cli = history
    with db(cli).begin() as conn:
        last = conn.execute(text("SELECT max(seq) FROM audit_log")).scalar_one()
        conn.execute(text("DELETE FROM audit_log WHERE seq > :s"), {"s": last - 3})
        conn.execute(text("UPDATE gateway_state SET value = :v WHERE key = 'audit_tip'"), {"v": last - 3})
    code, problem = verify(cli)
    assert code == 1 and "newest entries were deleted" in problem


def test_an_alias_moved_behind_the_chain_is_found(history: Cli) -> None:
    cli = history
    with db(cli).begin() as conn:
        conn.execute(text("UPDATE aliases SET version = 1 WHERE alias = 'production' AND name = 'hello'"))
    code, problem = verify(cli)
    assert code == 1 and "prompt:hello@production points at version 1" in problem
    with db(cli).begin() as conn:
        conn.execute(text("UPDATE aliases SET version = 2 WHERE alias = 'production' AND name = 'hello'"))
        conn.execute(
            text(
                "INSERT INTO aliases (kind, name, alias, version, updated_at, updated_by)"
                " VALUES ('prompt', 'hello', 'canary', 2, '2026-01-01 00:00:00', 'x')"
            )
        )
    code, problem = verify(cli)
    assert code == 1 and "prompt:hello@canary" in problem and "never moved there" in problem


def test_an_unkeyed_chain_is_kept_and_keyed_from_a_marked_point(tmp_path: Path) -> None:
    """An upgraded install: entries written before the key existed verify as before; the first keyed entry
    covers them, so rewriting one of them and rehashing is found too."""
    from gateway.db.engine import make_engine, migrate
    from gateway.keys import KeyService
    from gateway.registry import audit

    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = make_engine(url)
    migrate(old)
    for i in range(3):
        KeyService(old).create(name=f"k{i}", roles=["app"], actor="before the upgrade")
    old.dispose()

    upgraded = make_engine(url)
    audit.setup(upgraded, tmp_path / "data")
    KeyService(upgraded).create(name="after", roles=["app"], actor="after the upgrade")
    assert audit.verify(upgraded).ok
    with upgraded.begin() as conn:
        actions = [r[0] for r in conn.execute(text("SELECT action FROM audit_log ORDER BY seq"))]
        assert actions[3] == "audit.keyed"
        conn.execute(text("UPDATE audit_log SET actor = 'rewritten' WHERE seq = 2"))
        rehash_from(conn, 2)
    result = audit.verify(upgraded)
    assert not result.ok and result.seq == 4  # the keyed entry's MAC no longer matches
