"""Content hashes: sha256 of a spec's canonical JSON (plus the bytes of files it references).

The canonical form leaves out fields left at their default, so a new optional field does not change the
hash of every old spec, but always keeps `type` discriminators: `chunker: {type: sentences}` must never
collapse to `chunker: {}`, which would read back as the default kind. The same form is what the registry
stores, so a stored spec always parses back into the spec it came from.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

DISCRIMINATOR = "type"


def canonical_data(value: Any) -> Any:
    if isinstance(value, BaseModel):
        out: dict[str, Any] = {}
        for name, field in type(value).model_fields.items():
            item = getattr(value, name)
            at_default = not field.is_required() and item == field.get_default(call_default_factory=True)
            if at_default and name != DISCRIMINATOR:
                continue
            out[field.serialization_alias or field.alias or name] = canonical_data(item)
        return out
    if isinstance(value, (list, tuple)):
        return [canonical_data(v) for v in value]
    if isinstance(value, dict):
        return {str(k): canonical_data(v) for k, v in value.items()}
    return to_jsonable_python(value)


def canonical_json(spec: BaseModel) -> bytes:
    return orjson.dumps(canonical_data(spec), option=orjson.OPT_SORT_KEYS)


def content_hash(spec: BaseModel, extra_files: dict[str, bytes] | None = None) -> str:
    digest = hashlib.sha256(canonical_json(spec))
    for name in sorted(extra_files or {}):
        digest.update(b"\0" + name.encode() + b"\0")
        digest.update(hashlib.sha256((extra_files or {})[name]).digest())
    return digest.hexdigest()
