"""Registry fixtures: real git repositories with commits by two authors, real databases, real keys."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from gateway.db.engine import make_engine, migrate
from gateway.db.generation import set_counter
from gateway.keys import KeyService, Principal
from gateway.registry.bootstrap import REGISTRY_BOOTSTRAPPED
from gateway.registry.promotion import PromotionService
from gateway.settings import AliasRule, GovernanceConfig, RequireEval

ALICE = ("Alice Author", "alice@example.com")
BOB = ("Bob Builder", "bob@example.com")

SUPPORT_QA = """\
name: support_qa
description: Answers product questions from the handbook.
owner: alice@example.com
router: default
params: {temperature: 0.2, max_tokens: 200}
variables:
  type: object
  properties: {product: {type: string}}
  required: [product]
messages:
  - role: system
    content: |
      Answer questions about {{ product }} using only this context.
      [handbook-1] {{ product }} supports single sign-on through SAML and OIDC.
      [handbook-2] {{ product }} costs {{ price | default("10") }} dollars per seat per month.
"""


@dataclass
class GitProject:
    path: Path
    commits: list[str] = field(default_factory=list)

    def git(self, *args: str, author: tuple[str, str] = ALICE) -> str:
        name, email = author
        env_args = ["-c", f"user.name={name}", "-c", f"user.email={email}"]
        done = subprocess.run(
            ["git", "-C", str(self.path), *env_args, *args], capture_output=True, text=True, check=True
        )
        return done.stdout

    def write(self, rel: str, text: str) -> Path:
        target = self.path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        return target

    def commit(self, message: str, *, author: tuple[str, str] = ALICE) -> str:
        self.git("add", "-A", author=author)
        self.git("commit", "-q", "-m", message, author=author)
        sha = self.git("rev-parse", "HEAD").strip()
        self.commits.append(sha)
        return sha


@pytest.fixture
def git_project(make_project: Callable[..., Path]) -> Callable[..., GitProject]:
    def make(files: dict[str, str] | None = None, *, author: tuple[str, str] = ALICE) -> GitProject:
        path = make_project(files={".gitignore": ".opsgate/\n", **(files or {})}, git=False)
        project = GitProject(path)
        project.git("init", "-q", "-b", "main")
        project.commit("initial project", author=author)
        return project

    return make


@pytest.fixture
def fresh_engine(db_url: str, tmp_path: Path) -> Iterator[Engine]:
    """A migrated, empty database per test (SQLite in a temp dir, or a fresh PostgreSQL database): the
    registry is open for its bootstrap (tests/registry/test_bootstrap.py)."""
    url = f"sqlite:///{tmp_path / 'registry.db'}" if db_url.startswith("sqlite") else db_url
    eng = make_engine(url)
    migrate(eng)
    if not url.startswith("sqlite"):
        _truncate(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def engine(fresh_engine: Engine) -> Engine:
    """An established install, past its bootstrap: a sync registers versions and moves no alias but
    `latest`, and aliases move by promotion (what most registry tests are about)."""
    with Session(fresh_engine) as session, session.begin():
        set_counter(session, REGISTRY_BOOTSTRAPPED, 1)
    return fresh_engine


def _truncate(eng: Engine) -> None:
    """Empty every table of the (module-shared) PostgreSQL database, keeping the schema."""
    from sqlalchemy import inspect, text

    tables = [t for t in inspect(eng).get_table_names() if t != "alembic_version"]
    with eng.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(tables)} CASCADE"))


@dataclass
class People:
    admin: Principal
    alice: Principal  # prompt engineer, author of the commits
    bob: Principal  # approver
    carol: Principal  # approver
    app: Principal  # an application key: no governance role
    keys: dict[str, str]


@pytest.fixture
def people(engine: Engine) -> People:
    service = KeyService(engine)
    plain: dict[str, str] = {}
    for name, principal, roles in [
        ("admin", "admin@example.com", ["admin"]),
        ("alice", ALICE[1], ["prompt-engineer"]),
        ("bob", BOB[1], ["approver"]),
        ("carol", "carol@example.com", ["approver"]),
        ("app", "checkout-service", ["app"]),
    ]:
        _, plain[name] = service.create(name=name, roles=roles, principal=principal, actor="test")
    by_principal = {p.name: p for p in service.active_principals().values()}
    return People(
        by_principal["admin"],
        by_principal["alice"],
        by_principal["bob"],
        by_principal["carol"],
        by_principal["app"],
        plain,
    )


def governance(**rules: Any) -> GovernanceConfig:
    protected = {
        "staging": AliasRule(approvals=1),
        "production": AliasRule(approvals=1),
    }
    for alias, rule in rules.items():
        protected[alias] = rule
    return GovernanceConfig(protected_aliases=protected)


def eval_rule(suite: str) -> AliasRule:
    return AliasRule(approvals=1, require_eval=RequireEval(suite=suite))


@pytest.fixture
def promotions(engine: Engine) -> PromotionService:
    return PromotionService(engine, governance())
