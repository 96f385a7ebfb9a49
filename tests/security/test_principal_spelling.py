"""Issue 11, finding 8c: principals were compared as typed, so an approver key for `Alice@Example.com`,
` alice@example.com`, `alice@example.com` plus a zero-width space, a full-width spelling, or `Alice
<alice@example.com>` approved Alice's own request (or her own commit). Principals are normalised at key
creation and at every comparison (gateway/principals.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import InvalidRequest, PermissionDenied
from gateway.keys import KeyService
from gateway.principals import normalise
from gateway.registry.sync import sync
from tests.security._registry import ALICE, engine, key, promotions, repo

SPELLINGS = [
    "Alice@Example.com",
    " alice@example.com\t",
    "alice@example.com\u200b",
    "\u200dalice@exam\u00adple.com",
    "\uff41\uff4c\uff49\uff43\uff45@example.com",  # full-width letters (NFKC)
    "Alice Author <alice@example.com>",
    "ALICE <ALICE@EXAMPLE.COM>",
]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_another_spelling_of_the_author_or_requester_is_the_same_person(
    tmp_path: Path, spelling: str
) -> None:
    project = repo(tmp_path / "project")
    eng = engine(tmp_path)
    alice = key(eng, "alice", ALICE[1], ["prompt-engineer"])
    sync(eng, project.path, actor=alice.actor)
    twin = key(eng, "alice-2", spelling, ["approver"])
    assert twin.principal == "alice@example.com"  # stored normalised

    service = promotions(eng)
    request = service.request(alice, kind="prompt", name="support", version=1, alias="production")
    with pytest.raises(PermissionDenied, match="four-eyes"):
        service.approve(twin, request.id)
    # the same spelling as requester: the author (Alice, in git) may not approve her own request either
    carol = key(eng, "carol", "carol@example.com", ["approver"])
    assert service.approve(carol, request.id).state == "applied"


def test_normalisation_and_empty_principals() -> None:
    assert normalise("  Bob <BOB@example.com> ") == "bob@example.com"
    assert normalise("ci-bot") == "ci-bot"
    assert normalise("\u200b \u200c") == ""


def test_a_principal_that_is_only_invisible_characters_is_refused(tmp_path: Path) -> None:
    eng = engine(tmp_path)
    with pytest.raises(InvalidRequest, match="empty once normalised"):
        KeyService(eng).create(name="x", principal="\u200b\u2060 ", roles=["approver"], actor="t")
