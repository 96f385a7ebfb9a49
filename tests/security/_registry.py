"""Helpers for the approval tests: a real git repository with commits by several people, a real migrated
database past its bootstrap, real keys and the real promotion service."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from gateway.db.engine import make_engine, migrate
from gateway.db.generation import set_counter
from gateway.keys import KeyService, Principal, hash_key
from gateway.registry.bootstrap import REGISTRY_BOOTSTRAPPED
from gateway.registry.promotion import PromotionService
from gateway.settings import GovernanceConfig
from tests.fakes.gateway import LOOPBACK_EGRESS_YAML

ALICE = ("Alice Author", "alice@example.com")
BOB = ("Bob Builder", "bob@example.com")

PROMPT = "name: support\nrouter: default\nmessages:\n  - role: system\n    file: templates/support.j2\n"
ROUTER = "name: default\ndeployments:\n  - {id: a, model: openai/x, api_base: 'http://127.0.0.1:9/v1'}\n"


@dataclass
class Repo:
    path: Path

    def git(self, *args: str, author: tuple[str, str] = ALICE) -> str:
        name, email = author
        done = subprocess.run(
            ["git", "-C", str(self.path), "-c", f"user.name={name}", "-c", f"user.email={email}", *args],
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout

    def write(self, rel: str, text: str) -> None:
        target = self.path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")

    def commit(self, message: str, *, author: tuple[str, str] = ALICE) -> None:
        self.git("add", "-A", author=author)
        self.git("commit", "-q", "-m", message, author=author)


def repo(root: Path, *, template: str = "Answer politely.") -> Repo:
    """A project whose prompt `support` reads its system message from a template file; all by Alice."""
    root.mkdir(parents=True, exist_ok=True)
    project = Repo(root)
    project.git("init", "-q", "-b", "main")
    project.write(".gitignore", ".opsgate/\n")
    project.write("config/gateway.yaml", LOOPBACK_EGRESS_YAML)
    project.write("config/routers/default.yaml", ROUTER)
    project.write("prompts/support.yaml", PROMPT)
    project.write("prompts/templates/support.j2", template)
    project.commit("a support prompt")
    return project


def engine(tmp: Path) -> Engine:
    """A migrated SQLite database past its bootstrap: aliases move only by promotion."""
    eng = make_engine(f"sqlite:///{tmp / 'registry.db'}")
    migrate(eng)
    with Session(eng) as session, session.begin():
        set_counter(session, REGISTRY_BOOTSTRAPPED, 1)
    return eng


def key(
    eng: Engine, name: str, principal: str, roles: list[str], created_by_key: str | None = None
) -> Principal:
    """A real key, returned as the gateway sees it (looked up by its hash)."""
    kwargs = {"created_by_key": created_by_key} if created_by_key else {}
    _, plain = KeyService(eng).create(name=name, roles=roles, principal=principal, actor="test", **kwargs)
    return KeyService(eng).active_principals()[hash_key(plain)]


def promotions(eng: Engine) -> PromotionService:
    return PromotionService(eng, GovernanceConfig())
