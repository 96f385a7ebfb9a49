"""`opsgate sync`: what git holds at HEAD becomes immutable, content-hashed versions."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from gateway.db.models import AuditEntry
from gateway.errors import ConfigError, Conflict
from gateway.registry import audit
from gateway.registry.store import VersionStore
from gateway.registry.sync import bootstrap, sync
from tests.registry.conftest import ALICE, BOB, SUPPORT_QA, GitProject

ACTOR = "alice@example.com (key test)"


def test_sync_registers_each_file_with_its_commit_author_and_message(
    git_project: Callable[..., GitProject], engine: Engine
) -> None:
    project = git_project({"prompts/support_qa.yaml": SUPPORT_QA})
    report = sync(engine, project.path, actor=ACTOR)

    refs = {r.ref.split("#")[0] for r in report.registered}
    assert refs == {"prompt:support_qa@1", "router:default@1", "router:minilm@1"}
    assert report.errors == [] and report.unchanged == []
    prompt = VersionStore(engine).get("prompt", "support_qa", 1)
    assert prompt is not None
    assert prompt.git_commit == project.commits[-1] == report.commit
    assert prompt.git_author == f"{ALICE[0]} <{ALICE[1]}>"
    assert prompt.git_message == "initial project"
    assert prompt.source_path == "prompts/support_qa.yaml"
    assert not prompt.dirty
    assert VersionStore(engine).aliases("prompt", "support_qa")[("prompt", "support_qa")] == {"latest": 1}


def test_resync_is_a_no_op_and_a_change_makes_a_new_version_with_its_own_commit(
    git_project: Callable[..., GitProject], engine: Engine
) -> None:
    project = git_project({"prompts/support_qa.yaml": SUPPORT_QA})
    first = sync(engine, project.path, actor=ACTOR)
    entries_before = audit.verify(engine).entries

    again = sync(engine, project.path, actor=ACTOR)
    assert again.registered == []
    assert {r.ref for r in again.unchanged} == {r.ref for r in first.registered}
    assert audit.verify(engine).entries == entries_before  # a no-op writes nothing, not even an audit entry

    project.write("prompts/support_qa.yaml", SUPPORT_QA.replace("SAML and OIDC", "SAML"))
    sha = project.commit("SSO: only SAML", author=BOB)
    changed = sync(engine, project.path, actor=ACTOR)
    assert [r.ref.split("#")[0] for r in changed.registered] == ["prompt:support_qa@2"]
    v2 = VersionStore(engine).get("prompt", "support_qa", 2)
    v1 = VersionStore(engine).get("prompt", "support_qa", 1)
    assert v1 is not None and v2 is not None
    assert (
        v2.git_commit == sha
        and v2.git_author == f"{BOB[0]} <{BOB[1]}>"
        and v2.git_message == "SSO: only SAML"
    )
    assert v2.content_hash != v1.content_hash
    assert VersionStore(engine).aliases("prompt", "support_qa")[("prompt", "support_qa")]["latest"] == 2

    # Formatting-only changes (comments, key order) keep the canonical hash: no new version.
    project.write("prompts/support_qa.yaml", "# a comment\n" + SUPPORT_QA.replace("SAML and OIDC", "SAML"))
    project.commit("comment only")
    assert sync(engine, project.path, actor=ACTOR).registered == []


def test_dirty_working_copy_is_refused_unless_allowed_and_then_marked_dirty(
    git_project: Callable[..., GitProject], engine: Engine
) -> None:
    project = git_project({"prompts/support_qa.yaml": SUPPORT_QA})
    project.write("prompts/support_qa.yaml", SUPPORT_QA.replace("10", "12"))

    with pytest.raises(Conflict) as refused:
        sync(engine, project.path, actor=ACTOR)
    assert "prompts/support_qa.yaml" in refused.value.message and "--allow-dirty" in refused.value.message
    assert VersionStore(engine).versions() == []  # nothing was written

    report = sync(engine, project.path, actor=ACTOR, allow_dirty=True)
    dirty = {r.name: r.dirty for r in report.registered}
    assert dirty == {"support_qa": True, "default": False, "minilm": False}
    assert report.dirty_files == ["prompts/support_qa.yaml"]


def test_invalid_files_are_reported_with_file_line_and_field_and_valid_ones_still_sync(
    git_project: Callable[..., GitProject], engine: Engine
) -> None:
    broken_field = SUPPORT_QA.replace("params: {temperature: 0.2", "params: {temprature: 0.2")
    bad_template = "name: broken_tpl\nmessages:\n  - role: system\n    content: 'Hello {{ name '\n"
    project = git_project(
        {
            "prompts/support_qa.yaml": SUPPORT_QA,
            "prompts/typo.yaml": broken_field.replace("name: support_qa", "name: typo"),
            "prompts/broken_tpl.yaml": bad_template,
        }
    )
    report = sync(engine, project.path, actor=ACTOR)

    assert {r.name for r in report.registered} == {"support_qa", "default", "minilm"}
    messages = sorted(e.message for e in report.errors)
    assert len(messages) == 2
    assert messages[0].startswith("prompts/broken_tpl.yaml:4: messages.0.content: template syntax error")
    assert messages[1].startswith("prompts/typo.yaml:5: params.temprature: unknown field")


def test_a_bare_name_may_not_be_both_a_router_and_a_prompt(
    git_project: Callable[..., GitProject], engine: Engine
) -> None:
    project = git_project({"prompts/default.yaml": SUPPORT_QA.replace("name: support_qa", "name: default")})
    report = sync(engine, project.path, actor=ACTOR)
    assert "router:default@1" in {r.ref.split("#")[0] for r in report.registered}
    assert not any(r.kind == "prompt" for r in report.registered)
    assert len(report.errors) == 1 and "bare name 'default'" in report.errors[0].message


def test_template_files_are_part_of_the_version(
    git_project: Callable[..., GitProject], engine: Engine
) -> None:
    spec = "name: greet\nmessages:\n  - role: system\n    file: templates/greet.j2\n"
    project = git_project({"prompts/greet.yaml": spec, "prompts/templates/greet.j2": "Hello {{ who }}."})
    sync(engine, project.path, actor=ACTOR)
    project.write("prompts/templates/greet.j2", "Good day, {{ who }}.")
    project.commit("friendlier greeting")
    report = sync(engine, project.path, actor=ACTOR)

    assert [r.ref.split("#")[0] for r in report.registered] == ["prompt:greet@2"]
    v1 = VersionStore(engine).get("prompt", "greet", 1)
    v2 = VersionStore(engine).get("prompt", "greet", 2)
    assert v1 is not None and v2 is not None
    assert v1.files == {"templates/greet.j2": "Hello {{ who }}."}
    assert v2.files == {"templates/greet.j2": "Good day, {{ who }}."}


def test_sync_outside_git_is_refused(make_project: Callable[..., object], engine: Engine) -> None:
    path = make_project(git=False)
    with pytest.raises(ConfigError, match="not a git repository"):
        sync(engine, path, actor=ACTOR)  # type: ignore[arg-type]


def test_bootstrap_registers_committed_files_once_as_production(
    git_project: Callable[..., GitProject], fresh_engine: Engine
) -> None:
    engine = fresh_engine
    project = git_project({"prompts/support_qa.yaml": SUPPORT_QA})
    project.write("prompts/draft.yaml", SUPPORT_QA.replace("name: support_qa", "name: draft"))  # untracked
    project.write("prompts/support_qa.yaml", SUPPORT_QA.replace("10", "12"))  # an uncommitted change
    report = bootstrap(engine, project.path, actor="system:bootstrap")
    assert report.ran and report.errors == []
    assert {r.name for r in report.registered} == {"support_qa", "default", "minilm"}
    assert sorted(line.split()[0] for line in report.skipped) == [
        "prompts/draft.yaml",
        "prompts/support_qa.yaml",
    ]
    registered = VersionStore(engine).get("prompt", "support_qa", 1)
    assert registered is not None and 'costs {{ price | default("10") }}' in str(registered.spec)  # HEAD's
    assert not registered.dirty and registered.git_commit == project.commits[-1]
    aliases = VersionStore(engine).aliases()
    assert aliases[("prompt", "support_qa")] == {"latest": 1, "production": 1}
    assert ("prompt", "draft") not in aliases
    entries = [e for e in audit_entries(engine) if e.action == "registry.bootstrap"]
    assert len(entries) == 1 and entries[0].actor == "system:bootstrap"
    assert entries[0].after["commit"] == project.commits[-1]

    project.commit("price and a draft")  # committed now, but the registry is governed from here on
    again = bootstrap(engine, project.path, actor="system:bootstrap")
    assert not again.ran and again.registered == []
    assert VersionStore(engine).aliases()[("prompt", "support_qa")] == {"latest": 1, "production": 1}
    assert ("prompt", "draft") not in VersionStore(engine).aliases()
    assert sync(engine, project.path, actor=ACTOR).bootstrapped is False
    assert "production" not in VersionStore(engine).aliases()[("prompt", "draft")]


def audit_entries(engine: Engine) -> list[AuditEntry]:
    with Session(engine) as s:
        return list(s.scalars(select(AuditEntry).order_by(AuditEntry.seq)))


def test_online_eval_blocks_are_checked_at_load_time(
    git_project: Callable[..., GitProject], engine: Engine
) -> None:
    online = SUPPORT_QA + "online_eval: {sample_rate: 0.1, metrics: [exact_match]}\n"
    judged = SUPPORT_QA + "online_eval: {sample_rate: 0.1, metrics: [faithfulness]}\n"
    good = SUPPORT_QA + "online_eval: {sample_rate: 0.1, metrics: [faithfulness], judge: default}\n"
    project = git_project(
        {
            "prompts/ref_needed.yaml": online.replace("name: support_qa", "name: ref_needed"),
            "prompts/no_judge.yaml": judged.replace("name: support_qa", "name: no_judge"),
            "prompts/support_qa.yaml": good,
        }
    )
    report = sync(engine, project.path, actor=ACTOR)
    assert "support_qa" in {r.name for r in report.registered}
    errors = sorted(e.message for e in report.errors)
    assert errors[0].startswith("prompts/no_judge.yaml:") and "set judge to a chat router" in errors[0]
    assert errors[1].startswith("prompts/ref_needed.yaml:") and "needs reference answers" in errors[1]


def test_a_prompt_naming_a_router_index_or_judge_that_does_not_exist_is_refused(
    git_project: Callable[..., GitProject], engine: Engine
) -> None:
    rag = SUPPORT_QA + "retrieval: {index: nowhere, top_k: 2}\n"
    judged = SUPPORT_QA + "online_eval: {sample_rate: 0.1, metrics: [faithfulness], judge: nojudge}\n"
    project = git_project(
        {
            "prompts/support_qa.yaml": SUPPORT_QA,
            "prompts/lost.yaml": SUPPORT_QA.replace("name: support_qa", "name: lost").replace(
                "router: default", "router: nope@production"
            ),
            "prompts/rag.yaml": rag.replace("name: support_qa", "name: rag"),
            "prompts/judged.yaml": judged.replace("name: support_qa", "name: judged"),
            "prompts/handbook_qa.yaml": SUPPORT_QA.replace("name: support_qa", "name: handbook_qa")
            + "retrieval: {index: docs}\n",  # config/indexes/docs.yaml: exists, even unbuilt
        }
    )
    report = sync(engine, project.path, actor=ACTOR)
    assert {r.name for r in report.registered} == {"support_qa", "handbook_qa", "default", "minilm"}
    assert sorted(e.message for e in report.errors) == [
        "prompts/judged.yaml:16: online_eval.judge: 'nojudge' is not a router: there is no"
        " config/routers/nojudge.yaml and no router:nojudge in the registry; name an existing router or add"
        " its file",
        "prompts/lost.yaml:4: router: 'nope' is not a router: there is no config/routers/nope.yaml and no"
        " router:nope in the registry; name an existing router or add its file",
        "prompts/rag.yaml:16: retrieval.index: 'nowhere' is not an index: there is no"
        " config/indexes/nowhere.yaml and no index:nowhere in the registry; name an existing index or add"
        " its file",
    ]
