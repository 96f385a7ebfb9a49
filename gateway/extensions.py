"""Every extension point of opsgate, in one place.

An extension is a factory named in a group. Built-ins are listed here by import path and are loaded
exactly like third-party ones, which register under the same group names as Python entry points:

    [project.entry-points."opsgate.adapters"]
    myprovider = "my_package.adapter:create"

| group               | factory signature                                   | used by            |
| ------------------- | --------------------------------------------------- | ------------------ |
| opsgate.adapters    | create(services: AdapterServices) -> Adapter        | gateway.providers  |
| opsgate.checks      | a PolicyCheck class                                 | gateway.policy     |
| opsgate.metrics     | a metric family: list[MetricDef] (evaluation.metrics) | gateway.evaluation |
| opsgate.kinds       | an ArtifactKind record (gateway.kinds)              | gateway.registry   |

A new provider, check, metric or artifact kind is a new file plus one line in BUILTINS (or an entry point).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from importlib.metadata import entry_points
from types import MappingProxyType
from typing import Any

ADAPTERS = "opsgate.adapters"
CHECKS = "opsgate.checks"
METRICS = "opsgate.metrics"
KINDS = "opsgate.kinds"

BUILTINS: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {
        ADAPTERS: {
            "openai": "gateway.providers.openai_compat:create",
            "litellm": "gateway.providers.litellm_adapter:create",
            "local": "gateway.providers.local:create",
        },
        CHECKS: {
            "access": "gateway.policy.checks.access:Access",
            "rate_limit": "gateway.policy.checks.rate_limit:RateLimit",
            "budget": "gateway.policy.checks.budget:Budget",
            "token_cap": "gateway.policy.checks.token_cap:TokenCap",
            "pii": "gateway.policy.checks.pii:Pii",
            "injection": "gateway.policy.checks.injection:Injection",
            "deny_list": "gateway.policy.checks.deny_list:DenyList",
            "json_output": "gateway.policy.checks.json_output:JsonOutput",
        },
        KINDS: {
            "prompt": "gateway.kinds:PROMPT",
            "router": "gateway.kinds:ROUTER",
            "index": "gateway.kinds:INDEX",
            "model": "gateway.kinds:MODEL",
            "pipeline": "gateway.kinds:PIPELINE",
        },
        METRICS: {
            "strings": "gateway.evaluation.metrics.strings:FAMILY",
            "context": "gateway.evaluation.metrics.context:FAMILY",
            "retrieval": "gateway.evaluation.metrics.retrieval:FAMILY",
            "semantic": "gateway.evaluation.metrics.semantic:FAMILY",
            "operational": "gateway.evaluation.metrics.operational:FAMILY",
            "judged": "gateway.evaluation.metrics.judged:FAMILY",
        },
    }
)


def _import(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def load(group: str) -> dict[str, Any]:
    """Built-ins of a group, then installed entry points (which may not shadow a built-in)."""
    found = {name: _import(path) for name, path in BUILTINS.get(group, {}).items()}
    for ep in entry_points(group=group):
        if ep.name not in found:
            found[ep.name] = ep.load()
    return found
