"""The cards of `/v1/models`: what a router or a prompt is, as the OpenAI model list shows it."""

from __future__ import annotations

from gateway.prompts.spec import PromptSpec
from gateway.registry.store import VersionRecord
from gateway.routing.router import Router
from gateway.shapes import Json


def model_card(router: Router) -> Json:
    providers = sorted({d.provider for d in router.spec.deployments})
    local = providers == ["local"]
    return {
        "id": router.name,
        "object": "model",
        "created": 0,
        "owned_by": "opsgate-local" if local else "opsgate",
        "opsgate": {
            "kind": "router",
            "serves": router.spec.kind,
            "version": router.version,
            "hash": router.content_hash,
            "ref": router.ref,
            "providers": providers,
            "local": local,
            "description": router.spec.description
            or ("the embedded local provider (no network, no key)" if local else ""),
            "deployments": [{"id": d.id, "model": d.model} for d in router.spec.deployments],
        },
    }


def prompt_card(record: VersionRecord, spec: PromptSpec) -> Json:
    return {
        "id": record.name,
        "object": "model",
        "created": int(record.created_at.timestamp()),
        "owned_by": spec.owner or "opsgate",
        "opsgate": {
            "kind": "prompt",
            "version": record.version,
            "hash": record.content_hash,
            "ref": record.ref,
            "router": spec.router,
            "description": spec.description,
            "variables": spec.variables,
            "retrieval": spec.retrieval.model_dump(exclude_none=True) if spec.retrieval else None,
            "tags": spec.tags,
        },
    }
