"""The audit log is append-only and hash-chained: edits, deletions and reorderings are found and named."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from gateway.keys import KeyService
from gateway.registry import audit
from gateway.registry.promotion import PromotionService
from gateway.registry.sync import sync
from tests.fakes.gateway import OPSGATE, subprocess_env
from tests.registry.conftest import SUPPORT_QA, GitProject, People


@pytest.fixture
def history(
    git_project: Callable[..., GitProject], engine: Engine, people: People, promotions: PromotionService
) -> Engine:
    """Key changes, registrations, a promotion with its approval and a revocation: ~12 chained entries."""
    project = git_project({"prompts/support_qa.yaml": SUPPORT_QA})
    sync(engine, project.path, actor=people.alice.actor)
    request = promotions.request(
        people.alice, kind="prompt", name="support_qa", version=1, alias="production"
    )
    promotions.approve(people.bob, request.id)
    KeyService(engine).revoke(people.app.key_id, actor=people.admin.actor)
    result = audit.verify(engine)
    assert result.ok and result.entries >= 12
    return engine


def _actions(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(text("SELECT action FROM audit_log ORDER BY seq"))]


def test_every_kind_of_change_is_audited(history: Engine) -> None:
    actions = _actions(history)
    for expected in (
        "key.create",
        "version.register",
        "promote.request",
        "promote.approve",
        "alias.promote",
        "key.revoke",
    ):
        assert expected in actions


def test_an_edited_entry_is_found_and_named(history: Engine) -> None:
    with history.begin() as conn:
        conn.execute(text("UPDATE audit_log SET actor = 'mallory' WHERE seq = 7"))
    result = audit.verify(history)
    assert (
        not result.ok
        and result.seq == 7
        and "entry 7" in (result.problem or "")
        and "edited" in (result.problem or "")
    )


def test_an_edited_before_after_payload_is_found(history: Engine) -> None:
    with history.begin() as conn:
        seq = conn.execute(text("SELECT seq FROM audit_log WHERE action = 'alias.promote'")).scalar_one()
        conn.execute(
            text("UPDATE audit_log SET after = :a WHERE seq = :s"), {"a": '{"version": 99}', "s": seq}
        )
    result = audit.verify(history)
    assert not result.ok and result.seq == seq


def test_a_deleted_entry_is_found_and_named(history: Engine) -> None:
    with history.begin() as conn:
        conn.execute(text("DELETE FROM audit_log WHERE seq = 5"))
    result = audit.verify(history)
    assert not result.ok and result.seq == 5 and "deleted" in (result.problem or "")


def test_deleting_the_newest_entries_is_found(history: Engine) -> None:
    total = audit.verify(history).entries
    with history.begin() as conn:
        conn.execute(text("DELETE FROM audit_log WHERE seq >= :s"), {"s": total - 1})
    result = audit.verify(history)
    assert not result.ok and "newest entries were deleted" in (result.problem or "")


def test_reordered_entries_are_found(history: Engine) -> None:
    # Swap the contents of entries 3 and 4 (keeping the sequence numbers): the chain breaks at 3.
    with history.begin() as conn:
        rows = {r.seq: r for r in conn.execute(text("SELECT * FROM audit_log WHERE seq IN (3, 4)"))}
        for seq, other in ((3, 4), (4, 3)):
            src = rows[other]
            conn.execute(
                text(
                    "UPDATE audit_log SET actor=:actor, action=:action, target=:target, prev_hash=:prev,"
                    " entry_hash=:hash, ts=:ts WHERE seq=:seq"
                ),
                {
                    "actor": src.actor,
                    "action": src.action,
                    "target": src.target,
                    "prev": src.prev_hash,
                    "hash": src.entry_hash,
                    "ts": src.ts,
                    "seq": seq,
                },
            )
    result = audit.verify(history)
    assert not result.ok and result.seq == 3


def test_cli_audit_verify_exit_codes(git_project: Callable[..., GitProject], tmp_path: Path) -> None:
    project = git_project({"prompts/support_qa.yaml": SUPPORT_QA})
    env = subprocess_env(
        {"OPSGATE_PROJECT_DIR": str(project.path), "OPSGATE_DATA_DIR": str(tmp_path / "data")}
    )

    def opsgate(*args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
        run_env = dict(env, **({"OPSGATE_API_KEY": key} if key else {}))
        return subprocess.run(
            [OPSGATE, *args],
            env=run_env,
            cwd=project.path,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )

    key = (
        opsgate(
            "keys",
            "create",
            "--name",
            "alice",
            "--role",
            "prompt-engineer",
            "--principal",
            "alice@example.com",
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    assert opsgate("sync", key=key).returncode == 0
    ok = opsgate("audit", "verify")
    assert ok.returncode == 0 and "intact" in ok.stdout

    from gateway.db.engine import make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'opsgate.db'}")
    with engine.begin() as conn:
        conn.execute(text("UPDATE audit_log SET target = 'prompt:other@1' WHERE seq = 2"))
    engine.dispose()
    bad = opsgate("audit", "verify")
    assert bad.returncode == 1 and "entry 2" in bad.stderr and "edited" in bad.stderr
