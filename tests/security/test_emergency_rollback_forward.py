"""Issue 11, finding 8e: an emergency rollback (admin only, applied at once without approval) moved an alias
to any version, including one never approved for it: a way around promotion. It now only goes back to a
version the alias held before (read from the audit chain), and refuses anything else with a 409.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import Conflict
from gateway.registry.store import VersionStore
from gateway.registry.sync import sync
from tests.security._registry import ALICE, BOB, engine, key, promotions, repo


def test_emergency_rollback_only_goes_back(tmp_path: Path) -> None:
    project = repo(tmp_path / "project")
    eng = engine(tmp_path)
    alice = key(eng, "alice", ALICE[1], ["prompt-engineer"])
    bob = key(eng, "bob", BOB[1], ["approver"])
    admin = key(eng, "root", "root@example.com", ["admin"])
    sync(eng, project.path, actor=alice.actor)
    for text in ("Version two.", "Version three."):
        project.write("prompts/templates/support.j2", text)
        project.commit(text)
        sync(eng, project.path, actor=alice.actor)

    service = promotions(eng)
    for version in (1, 2):
        service.approve(
            bob, service.request(alice, kind="prompt", name="support", version=version, alias="production").id
        )

    with pytest.raises(Conflict, match="only moves prompt:support@production back") as caught:
        service.rollback(
            admin, kind="prompt", name="support", to_version=3, reason="incident", emergency=True
        )
    assert caught.value.code == "not_a_rollback"
    assert VersionStore(eng).aliases("prompt", "support")[("prompt", "support")]["production"] == 2

    back = service.rollback(
        admin, kind="prompt", name="support", to_version=1, reason="incident", emergency=True
    )
    assert back.state == "applied"
    assert VersionStore(eng).aliases("prompt", "support")[("prompt", "support")]["production"] == 1
