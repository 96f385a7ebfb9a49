"""The bootstrap: the first registration into an empty registry points production at version 1, once,
from committed files, audited; a directory that is not a git repository needs the operator's say-so."""

from __future__ import annotations

import threading
from collections.abc import Callable

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from gateway.db.models import AuditEntry
from gateway.registry.bootstrap import indexes_open_now, registry_open_now
from gateway.registry.store import VersionStore
from gateway.registry.sync import bootstrap, sync
from tests.conftest import ProjectFactory
from tests.registry.conftest import SUPPORT_QA, GitProject

ACTOR = "alice@example.com (key test)"


def bootstrap_entries(engine: Engine) -> list[AuditEntry]:
    with Session(engine) as s:
        return list(s.scalars(select(AuditEntry).where(AuditEntry.action == "registry.bootstrap")))


def test_a_directory_that_is_not_a_git_repository_registers_nothing_without_the_operator(
    make_project: ProjectFactory, fresh_engine: Engine
) -> None:
    engine = fresh_engine
    project = make_project(files={"prompts/support_qa.yaml": SUPPORT_QA}, git=False)
    report = bootstrap(engine, project, actor="system:bootstrap")
    assert not report.ran and report.registered == []
    assert len(report.skipped) == 1
    assert "is not a git repository: nothing was registered" in report.skipped[0]
    assert "OPSGATE_BOOTSTRAP_WORKING_TREE=true" in report.skipped[0]
    assert VersionStore(engine).versions() == [] and registry_open_now(engine)

    allowed = bootstrap(engine, project, actor="system:bootstrap", working_tree=True)
    assert allowed.ran and {r.name for r in allowed.registered} == {"support_qa", "default", "minilm"}
    assert all(r.dirty and r.git_commit is None for r in allowed.registered)  # no commit to point at
    assert VersionStore(engine).aliases()[("prompt", "support_qa")] == {"latest": 1, "production": 1}
    assert not registry_open_now(engine) and len(bootstrap_entries(engine)) == 1


def test_two_processes_starting_at_once_bootstrap_once(
    git_project: Callable[..., GitProject], fresh_engine: Engine
) -> None:
    engine = fresh_engine
    project = git_project({"prompts/support_qa.yaml": SUPPORT_QA})
    reports = []
    threads = [
        threading.Thread(
            target=lambda: reports.append(bootstrap(engine, project.path, actor="system:bootstrap"))
        )
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.ran for r in reports) == [False, False, True]
    assert len(bootstrap_entries(engine)) == 1
    assert [r.version for r in VersionStore(engine).versions("prompt", "support_qa")] == [1]


def test_the_first_sync_is_the_bootstrap_and_dirty_files_do_not_become_production(
    git_project: Callable[..., GitProject], fresh_engine: Engine
) -> None:
    engine = fresh_engine
    project = git_project({"prompts/support_qa.yaml": SUPPORT_QA})
    project.write("prompts/draft.yaml", SUPPORT_QA.replace("name: support_qa", "name: draft"))
    report = sync(engine, project.path, actor=ACTOR, allow_dirty=True)
    assert report.bootstrapped
    aliases = VersionStore(engine).aliases()
    assert aliases[("prompt", "support_qa")] == {"latest": 1, "production": 1}
    assert aliases[("prompt", "draft")] == {"latest": 1}  # registered as asked, but dirty: no alias
    (entry,) = bootstrap_entries(engine)
    assert entry.actor == ACTOR
    assert entry.after["skipped"] == ["prompts/draft.yaml: uncommitted changes: registered, not production"]
    assert indexes_open_now(engine)  # indexes are bootstrapped by the first serve's build

    project.commit("draft")
    assert not sync(engine, project.path, actor=ACTOR).bootstrapped
    assert len(bootstrap_entries(engine)) == 1
