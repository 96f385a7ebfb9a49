"""What `/readyz` says about indexes: can this replica open every index version an alias points at?

Replicas that share a registry (PostgreSQL) must share the index store (a chroma server): a replica on
its own local chroma directory finds the versions other replicas built missing, and would answer every
RAG prompt with 503 `index_unavailable`. That replica is not ready (an orchestrator keeps it out of the
pool and a rolling update stops), and the body says what to set.

A fault every replica shares is reported, not made a readiness failure: a chroma server that does not
answer, or a version missing from the shared server, would pull every replica at once while chat,
embeddings and classic models still serve. Indexed prompts answer 503 meanwhile, naming the cause.
"""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.errors import OpsgateError
from gateway.retrieval.retriever import IndexLibrary
from gateway.snapshot import Catalog

READINESS_TIMEOUT_S = 2


def index_readiness(
    catalog: Catalog, library: IndexLibrary, *, shared_registry: bool
) -> tuple[bool, dict[str, Any]]:
    """(ready, body): each aliased index version opened (cached after the first success) or its error."""
    local_store = library.store.url is None
    versions: dict[str, dict[str, Any]] = {}
    ready = True
    snapshot = catalog.snapshot
    for (kind, name), aliases in sorted(snapshot.aliases.items()):
        if kind != "index":
            continue
        for version in sorted(set(aliases.values())):
            record = snapshot.records.get((kind, name, version))
            if record is None:
                continue
            try:
                reader = library.reader(record)
            except Exception as exc:  # noqa: BLE001 - readiness reports every failure, never raises
                code = exc.code if isinstance(exc, OpsgateError) else type(exc).__name__
                message = exc.message if isinstance(exc, OpsgateError) else str(exc)
                versions[f"index:{name}@{version}"] = {"ok": False, "code": code, "error": message}
                if code == "index_unavailable" and local_store and shared_registry:
                    ready = False
                continue
            versions[f"index:{name}@{version}"] = {"ok": True, "lexical_loaded": reader.lexical_loaded}
    body: dict[str, Any] = {
        "store": library.store.where if not local_store else f"local {library.store.where}",
        "versions": versions,
    }
    if not ready:
        body["error"] = (
            "this replica keeps indexes in a local chroma directory while its registry is shared: versions"
            " built by other replicas are missing here; point every replica at one chroma server"
            " (OPSGATE_CHROMA_URL)"
        )
    return ready, body


async def check_indexes(parts: Any, checks: dict[str, object]) -> bool:
    """`/readyz`'s `indexes` check (gateway/api/health.py): sets `checks["indexes"]`; False only when this
    replica cannot serve an aliased index version that other replicas can."""
    shared = not parts.settings.resolved_database_url().startswith("sqlite")
    try:
        ready, checks["indexes"] = await asyncio.wait_for(
            asyncio.to_thread(
                index_readiness, parts.catalog, parts.retrieval.library, shared_registry=shared
            ),
            timeout=READINESS_TIMEOUT_S,
        )
    except TimeoutError:
        checks["indexes"] = {"error": f"the index store did not answer within {READINESS_TIMEOUT_S} s"}
        return True  # a slow shared store is every replica's fault: reported, not a reason to pull this one
    return ready
