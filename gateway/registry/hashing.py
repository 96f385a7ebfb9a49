"""Content hashes: sha256 of a spec's canonical JSON (plus the bytes of files it references)."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from pydantic import BaseModel


def canonical_json(spec: BaseModel) -> bytes:
    """Defaults are left out, so a new optional field does not change the hash of every old spec."""
    data: Any = spec.model_dump(mode="json", exclude_defaults=True, by_alias=True)
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)


def content_hash(spec: BaseModel, extra_files: dict[str, bytes] | None = None) -> str:
    digest = hashlib.sha256(canonical_json(spec))
    for name in sorted(extra_files or {}):
        digest.update(b"\0" + name.encode() + b"\0")
        digest.update(hashlib.sha256((extra_files or {})[name]).digest())
    return digest.hexdigest()
