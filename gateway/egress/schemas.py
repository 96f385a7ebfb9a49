"""JSON Schemas, from an author's file or a caller's body, never make the gateway fetch anything.

jsonschema still retrieves a `$ref` naming an http(s) URL with urllib by default (deprecated, with a
warning): a prompt's variables schema, or a `response_format` schema checked by the `json_output` policy,
naming `http://169.254.169.254/...` or any internal host made the gateway GET it, off the operator's
egress list, and use the answer as a schema. Every validator opsgate builds resolves references within
its own schema only (`#/$defs/...`); anything else is unresolvable.
"""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource, Unresolvable

__all__ = ["Unresolvable", "validator"]


def _never_retrieve(uri: str) -> Resource[Any]:
    raise NoSuchResource(ref=uri)  # type: ignore[call-arg]  # an attrs class: mypy sees no fields


LOCAL_ONLY: Registry[Any] = Registry(retrieve=_never_retrieve)  # type: ignore[call-arg]  # attrs


def validator(schema: Any) -> Draft202012Validator:
    """A Draft 2020-12 validator whose references resolve within `schema` only (no host, no file)."""
    return Draft202012Validator(schema, registry=LOCAL_ONLY)
