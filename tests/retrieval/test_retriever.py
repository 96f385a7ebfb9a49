"""`IndexRetriever` in process on a real catalog: selectors, query templates, min_score, modes,
the lineage a `Retrieval` carries, router-embedded indexes, and errors that say what to do."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import NotFound, UpstreamUnavailable
from gateway.prompts.spec import PromptSpec
from gateway.providers import Adapters
from gateway.providers.base import AdapterServices
from gateway.registry.sync import bootstrap
from gateway.retrieval.retriever import IndexRetriever, Retrieval
from gateway.retrieval.store import collection_name
from gateway.snapshot import Catalog
from tests.retrieval.conftest import Workspace, WorkspaceFactory
from tests.retrieval.test_build import FILES, HANDBOOK

ROUTED = HANDBOOK.replace("name: handbook", "name: routed").replace(
    "metadata: [title]\n", "embedder: {type: router, router: minilm}\n"
)


@pytest.fixture(scope="module")
def setup(rag_project: Callable[..., Path], workspace_factory: WorkspaceFactory) -> tuple[Workspace, Catalog]:
    project = rag_project({**FILES, "config/indexes/routed.yaml": ROUTED}, prompts=False)
    ws = workspace_factory(project)
    bootstrap(ws.engine, project, actor="test")  # routers default and minilm
    ws.build("handbook")
    ws.build("routed")
    catalog = Catalog(ws.engine, Adapters(AdapterServices(ws.minilm)), refresh_interval_s=60)
    catalog.snapshot = catalog.load()
    return ws, catalog


def prompt(**retrieval: Any) -> PromptSpec:
    return PromptSpec.model_validate(
        {"name": "qa", "messages": [{"role": "system", "content": "x"}], "retrieval": retrieval}
    )


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


class Call:
    """What the request flow keeps of a retrieval: the lineage and the log entry (`Retrieval` views)."""

    def __init__(self, *_: str) -> None:
        self.artifacts: list[str] = []
        self.extra: dict[str, Any] = {}


async def retrieve(
    retriever: IndexRetriever, call: Call, spec: PromptSpec, variables: dict[str, Any], messages: list[Any]
) -> list[dict[str, Any]]:
    """Resolve, build the query, search: the flow's steps for a RAG prompt, recorded as the flow does."""
    assert spec.retrieval is not None
    record = retriever.resolve(spec.retrieval.index, spec.name)
    query = retriever.query(spec, spec.retrieval, variables, messages)
    found: Retrieval = await retriever.retrieve(record, spec.retrieval, query)
    call.artifacts.append(found.index)
    call.extra["retrieval"] = found.log_entry()
    return found.context()


async def test_lineage_and_context(setup: tuple[Workspace, Catalog]) -> None:
    ws, catalog = setup
    call = Call("req-1", "/v1/chat/completions")
    context = await retrieve(
        IndexRetriever(catalog, ws.library),
        call,
        prompt(index="handbook", top_k=2),
        {},
        user("Which animal is the largest?"),
    )
    record = catalog.resolve("index", "handbook")
    assert call.artifacts == [record.ref]
    assert call.extra["retrieval"]["index"] == record.ref and call.extra["retrieval"]["mode"] == "lexical"
    assert [c["id"] for c in call.extra["retrieval"]["chunks"]] == [c["id"] for c in context]
    top = context[0]
    assert (top["id"], top["document_id"], top["source"], top["index"]) == (
        "whales#0",
        "whales",
        "docs/whales.pdf",
        record.ref,
    )
    assert top["text"] == "The blue whale is the largest animal ever known."
    assert top["metadata"] == {"title": "Whales"} and top["score"] > 0


async def test_query_template_selector_mode_and_min_score(setup: tuple[Workspace, Catalog]) -> None:
    ws, catalog = setup
    retriever = IndexRetriever(catalog, ws.library)
    spec = prompt(index="handbook@1", top_k=3, mode="dense", query="{{ topic }} key file", min_score=0.3)
    call = Call("req-2", "/v1/chat/completions")
    context = await retrieve(retriever, call, spec, {"topic": "admin"}, user("ignored question"))
    assert context[0]["id"] == "guide#1"
    assert all(c["score"] >= 0.3 for c in context) and len(context) < 3
    assert call.extra["retrieval"]["mode"] == "dense"
    hybrid = await retrieve(
        retriever,
        Call("r", "x"),
        prompt(index="handbook@production", mode="hybrid"),
        {},
        user("rollback alias"),
    )
    assert hybrid[0]["id"] == "notes#0" and hybrid[0]["score"] <= 1.0


async def test_router_embedded_index_queries_through_the_router(setup: tuple[Workspace, Catalog]) -> None:
    ws, catalog = setup
    call = Call("req-3", "/v1/chat/completions")
    context = await retrieve(
        IndexRetriever(catalog, ws.library),
        call,
        prompt(index="routed", mode="dense", top_k=1),
        {},
        user("What is the biggest animal?"),
    )
    assert context[0]["id"] == "whales#0"
    assert call.artifacts[0].startswith("index:routed@1#")


async def test_errors_say_what_to_do(setup: tuple[Workspace, Catalog]) -> None:
    ws, catalog = setup
    retriever = IndexRetriever(catalog, ws.library)
    with pytest.raises(NotFound) as err:
        await retrieve(retriever, Call("a", "x"), prompt(index="nope"), {}, user("q"))
    assert "opsgate index build nope" in err.value.message and err.value.code == "index_not_found"
    with pytest.raises(NotFound, match="has no alias 'staging'"):
        await retrieve(retriever, Call("b", "x"), prompt(index="handbook@staging"), {}, user("q"))
    record = catalog.resolve("index", "routed")
    ws.store.delete(collection_name(record.name, record.version, record.content_hash))
    try:
        with pytest.raises(UpstreamUnavailable, match="opsgate index build routed"):
            await retrieve(
                IndexRetriever(catalog, type(ws.library)(ws.store, ws.root, ws.minilm)),
                Call("c", "x"),
                prompt(index="routed"),
                {},
                user("q"),
            )
    finally:
        await asyncio.to_thread(ws.build, "routed")  # restores the collection of the same version
