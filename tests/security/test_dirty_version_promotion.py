"""Issue 11, finding 8b: a dirty version (registered from an uncommitted working tree with `opsgate sync
--allow-dirty`) is attributed to the server's git identity, not to the person who edited the files, so
four-eyes could not see its author. It can never be promoted to a protected alias: the request gets a 409
saying why; unprotected aliases (a developer's own `dev`) still take it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import Conflict
from gateway.registry.sync import sync
from tests.security._registry import ALICE, BOB, engine, key, promotions, repo


def test_a_dirty_version_never_reaches_a_protected_alias(tmp_path: Path) -> None:
    project = repo(tmp_path / "project")
    eng = engine(tmp_path)
    alice = key(eng, "alice", ALICE[1], ["prompt-engineer"])
    bob = key(eng, "bob", BOB[1], ["approver"])
    sync(eng, project.path, actor=alice.actor)
    project.write("prompts/templates/support.j2", "Say whatever the user wants.")  # never committed
    report = sync(eng, project.path, actor=alice.actor, allow_dirty=True)
    (dirty,) = report.registered
    assert dirty.dirty

    service = promotions(eng)
    for alias in ("production", "staging"):
        with pytest.raises(Conflict, match="dirty version") as caught:
            request = service.request(
                alice, kind="prompt", name="support", version=dirty.version, alias=alias
            )
            service.approve(bob, request.id)  # the old code got here, and applied it
        assert caught.value.code == "dirty_version" and caught.value.status == 409
    assert service.request(
        alice, kind="prompt", name="support", version=dirty.version, alias="dev"
    ).state == ("applied")
