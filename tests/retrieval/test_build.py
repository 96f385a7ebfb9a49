"""`IndexBuilder`: content-hashed versions, no-op when unchanged, bad files skipped whole, old
collections kept, the production bootstrap, and both chroma modes (embedded and a real server)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.db.models import AuditEntry
from gateway.errors import ConfigError
from gateway.registry.bootstrap import close_index_bootstrap
from gateway.registry.store import VersionStore
from gateway.registry.sync import bootstrap
from gateway.retrieval.build import lexical_dir
from gateway.retrieval.records import build_of
from gateway.retrieval.store import collection_name
from tests.retrieval.conftest import WorkspaceFactory, collection_chunks, pdf_bytes

HANDBOOK = """name: handbook
description: Test handbook.
source: {type: files, paths: ["docs/*"], root: docs}
chunker: {type: markdown, size: 200, overlap: 20}
metadata: [title]
"""
FILES: dict[str, str | bytes] = {
    "config/indexes/handbook.yaml": HANDBOOK,
    "docs/guide.md": "# Guide\n## Install\nRun make serve to start opsgate on port 8080.\n"
    "## Keys\nThe first start writes an admin key to .opsgate/admin.key.\n",
    "docs/whales.pdf": pdf_bytes("The blue whale is the largest animal ever known.", title="Whales"),
    "docs/page.html": "<html><head><title>Store</title></head><body><p>Chroma keeps one collection per"
    " index version.</p></body></html>",
    "docs/notes.txt": "Rollback moves an alias back to an earlier version.",
    "docs/broken.pdf": b"%PDF-1.4 this is not a PDF",
}
LOCAL = {"type": "local"}


@pytest.fixture(scope="module")
def handbook(rag_project: Callable[..., Path]) -> Path:
    return rag_project(FILES, prompts=False)


def _chunks(ws: object, ref_name: str, version: int, content_hash: str) -> dict[str, dict[str, object]]:
    collection = ws.store.get(collection_name(ref_name, version, content_hash), LOCAL)  # type: ignore[attr-defined]
    assert collection is not None
    return collection_chunks(collection)


def test_build_registers_bootstraps_and_skips_a_bad_file(
    handbook: Path, workspace_factory: WorkspaceFactory
) -> None:
    ws = workspace_factory(handbook)
    result = ws.build("handbook")

    assert result.status == "built" and result.bootstrapped
    assert result.record.ref.startswith("index:handbook@1#")
    assert (result.files, result.documents) == (5, 4)
    assert [s["path"] for s in result.skipped] == ["docs/broken.pdf"]
    assert result.skipped[0]["error"].startswith("not a readable PDF")
    store = VersionStore(ws.engine)
    assert store.aliases("index", "handbook") == {("index", "handbook"): {"latest": 1, "production": 1}}
    assert result.record.git_author == "Doc Writer <writer@example.com>" and not result.record.dirty
    with Session(ws.engine) as s:
        entry = s.scalars(select(AuditEntry).where(AuditEntry.action == "alias.bootstrap")).one()
        build = build_of(s, "handbook", 1)
        assert build is not None
        assert [f["path"] for f in build.manifest] == [
            "docs/broken.pdf",
            "docs/guide.md",
            "docs/notes.txt",
            "docs/page.html",
            "docs/whales.pdf",
        ]
        assert build.stats["chunks"] == result.chunks == 5
    assert (entry.target, entry.after, entry.actor) == ("index:handbook@production", {"version": 1}, "test")

    chunks = _chunks(ws, "handbook", 1, result.record.content_hash)
    assert {c["source"] for c in chunks.values()} == {
        "docs/guide.md",
        "docs/notes.txt",
        "docs/page.html",
        "docs/whales.pdf",
    }  # nothing of the broken file
    assert chunks["guide#0"]["text"] == "Guide > Install\n\nRun make serve to start opsgate on port 8080."
    assert chunks["guide#1"]["title"] == "Guide" and chunks["whales#0"]["title"] == "Whales"
    assert lexical_dir(ws.root, collection_name("handbook", 1, result.record.content_hash)).is_dir()

    reader = ws.library.reader(result.record)
    question = "Which animal is the largest?"
    vector = ws.minilm.encode([question])[0]
    for mode in ("dense", "lexical", "hybrid"):
        hits = reader.search(question, vector, 2, mode)  # type: ignore[arg-type]
        assert hits[0].id == "whales#0", mode
        assert hits[0].source == "docs/whales.pdf" and hits[0].document_id == "whales"


def test_unchanged_corpus_is_a_no_op(
    handbook: Path, workspace_factory: WorkspaceFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = workspace_factory(handbook)
    first = ws.build("handbook")

    def no_model(texts: list[str]) -> None:
        raise AssertionError("an unchanged index must not embed anything")

    monkeypatch.setattr(ws.minilm, "encode", no_model)
    again = ws.build("handbook")
    assert again.status == "unchanged" and again.record == first.record
    spec = handbook / "config" / "indexes" / "handbook.yaml"
    spec.write_text(HANDBOOK.replace("Test handbook.", "Edited description."), encoding="utf-8")
    try:
        assert ws.build("handbook").status == "unchanged"  # a description is not content
    finally:
        spec.write_text(HANDBOOK, encoding="utf-8")
    assert [r.version for r in VersionStore(ws.engine).versions("index", "handbook")] == [1]


def test_a_changed_file_builds_a_new_version_and_keeps_the_old_one(
    rag_project: Callable[..., Path], workspace_factory: WorkspaceFactory
) -> None:
    project = rag_project(FILES, prompts=False)
    ws = workspace_factory(project)
    v1 = ws.build("handbook").record
    (project / "docs" / "notes.txt").write_text(
        "Rollback is instant: old collections stay.", encoding="utf-8"
    )
    v2 = ws.build("handbook")
    assert v2.status == "built" and v2.record.version == 2 and not v2.bootstrapped
    assert v2.record.dirty and v2.record.git_message == "uncommitted changes"  # notes.txt is not committed
    names = ws.store.names()
    assert collection_name("handbook", 1, v1.content_hash) in names
    assert collection_name("handbook", 2, v2.record.content_hash) in names
    assert VersionStore(ws.engine).aliases("index", "handbook")[("index", "handbook")] == {
        "latest": 2,
        "production": 1,
    }
    assert _chunks(ws, "handbook", 1, v1.content_hash)["notes#0"]["text"].startswith("Rollback moves")
    assert _chunks(ws, "handbook", 2, v2.record.content_hash)["notes#0"]["text"].startswith("Rollback is")

    ws.store.delete(collection_name("handbook", 2, v2.record.content_hash))  # e.g. a wiped chroma dir
    restored = ws.build("handbook")
    assert restored.status == "restored" and restored.record == v2.record
    assert ws.store.get(collection_name("handbook", 2, v2.record.content_hash), LOCAL) is not None


def test_nothing_indexable_registers_nothing(
    rag_project: Callable[..., Path], workspace_factory: WorkspaceFactory
) -> None:
    project = rag_project(
        {"config/indexes/handbook.yaml": HANDBOOK, "docs/only.pdf": b"%PDF-1.4 broken"}, prompts=False
    )
    ws = workspace_factory(project)
    with pytest.raises(ConfigError, match="nothing to index"):
        ws.build("handbook")
    assert VersionStore(ws.engine).versions("index") == []
    assert not [n for n in ws.store.names() if "staging" in n]


def test_build_into_a_chroma_server(
    handbook: Path, workspace_factory: WorkspaceFactory, chroma_server: str
) -> None:
    ws = workspace_factory(handbook, chroma_url=chroma_server)
    result = ws.build("handbook")
    assert result.status == "built"
    import chromadb
    from chromadb.config import Settings

    port = int(chroma_server.rsplit(":", 1)[1])
    client = chromadb.HttpClient(host="127.0.0.1", port=port, settings=Settings(anonymized_telemetry=False))
    name = collection_name("handbook", 1, result.record.content_hash)
    assert name in [c.name for c in client.list_collections()]
    hits = ws.library.reader(result.record).search("admin key file", None, 1, "lexical")
    assert hits[0].id == "guide#1"
    assert ws.build("handbook").status == "unchanged"


def test_router_embedder_pins_the_router_version(
    rag_project: Callable[..., Path], workspace_factory: WorkspaceFactory
) -> None:
    spec = HANDBOOK.replace("metadata: [title]\n", "embedder: {type: router, router: minilm}\n")
    project = rag_project({**FILES, "config/indexes/handbook.yaml": spec}, prompts=False)
    ws = workspace_factory(project)
    bootstrap(ws.engine, project, actor="test")  # registers the routers (minilm@1 as production)
    result = ws.build("handbook")
    assert result.record.spec["embedder"] == {"type": "router", "router": "minilm@1", "batch_size": 64}
    collection = ws.store.get(collection_name("handbook", 1, result.record.content_hash), {"type": "router"})
    got = collection.get(ids=["notes#0"], include=["embeddings", "documents"])
    local = ws.minilm.encode([got["documents"][0]])[0]
    assert np.allclose(np.asarray(got["embeddings"][0]), local, atol=1e-5)


@pytest.mark.postgres
def test_build_registers_on_postgres(
    handbook: Path, workspace_factory: WorkspaceFactory, pg_url: str
) -> None:
    ws = workspace_factory(handbook, database_url=pg_url)
    result = ws.build("handbook")
    assert result.status == "built" and result.bootstrapped and result.record.version == 1
    with Session(ws.engine) as s:
        build = build_of(s, "handbook", 1)
        assert build is not None and build.stats["chunks"] == result.chunks and len(build.manifest) == 5
    assert ws.build("handbook").status == "unchanged"
    ws.engine.dispose()


def test_after_the_first_start_a_new_index_reaches_production_only_by_promotion(
    handbook: Path, workspace_factory: WorkspaceFactory
) -> None:
    ws = workspace_factory(handbook)
    close_index_bootstrap(ws.engine, actor="system:bootstrap", built=[], skipped=[])  # the first serve ran
    result = ws.build("handbook")
    assert result.status == "built" and not result.bootstrapped
    assert VersionStore(ws.engine).aliases("index", "handbook") == {("index", "handbook"): {"latest": 1}}
    with Session(ws.engine) as s:
        assert s.scalars(select(AuditEntry).where(AuditEntry.action == "index.bootstrap")).one().actor == (
            "system:bootstrap"
        )
