"""Model files: a content-addressed store under the data directory, integrity checks, safe loading.

A version's files are copied into `<data dir>/ml/store/<version hash>/` the first time their bytes are
seen to match the version's content hash, so the version stays servable (for rollback) after the file
in the project changes. Every load recomputes the hash from the spec and the bytes it is about to use:
a tampered file, in the project or in the store, is refused, never loaded.

skops files are loaded with skops' safe loader: any type outside its trusted set (scikit-learn, numpy,
scipy) is refused unless the spec lists it in `trusted_types` or says `trusted: true`. pickle and
joblib files run code on load, so the spec refuses them at parse time unless `trusted: true`.
"""

from __future__ import annotations

import io
import pickle
import posixpath
from pathlib import Path
from typing import Any

from gateway.ml.errors import ModelUnavailable
from gateway.ml.spec import ModelSpec
from gateway.registry.blobs import BlobStore
from gateway.registry.hashing import content_hash
from gateway.registry.tree import read_project_file

ArtifactStore = BlobStore  # the ML name for the registry's content-addressed store


def verified_files(
    spec: ModelSpec,
    version_hash: str,
    ref: str,
    source_path: str | None,
    project_dir: Path,
    store: ArtifactStore,
) -> dict[str, bytes]:
    """The bytes of the version's files, from the store or the project, checked against the version hash."""
    names = spec.referenced_files()
    stored = store.read(version_hash, names)
    if stored is not None and content_hash(spec, stored) == version_hash:
        return stored
    if source_path is not None:
        base = posixpath.dirname(source_path)
        try:  # never through a link, only regular files (gateway/registry/tree.py)
            current = {name: read_project_file(project_dir, posixpath.join(base, name)) for name in names}
        except OSError as exc:
            current = None
            missing = f"{exc.filename}: {exc.strerror}"
        if current is not None:
            if content_hash(spec, current) == version_hash:
                store.stash(version_hash, current)
                return current
            missing = ""
    else:
        missing = "the version records no source file"
    reason = (
        f"the file is missing ({missing})"
        if missing
        else "the model or reference file's bytes do not match the version's content hash (the file was"
        " changed or tampered with after registration)"
    )
    raise ModelUnavailable(
        f"{ref} cannot be served: {reason}, and no verified copy is in the model store. Restore the file as"
        " registered, or register the new content with `opsgate sync` and promote it."
    )


def load_estimator(spec: ModelSpec, data: bytes, ref: str) -> Any:
    fmt = spec.model.format
    if fmt == "skops":
        return _load_skops(spec, data, ref)
    if not spec.model.trusted:  # the spec refuses this at parse time; checked again before running code
        raise ModelUnavailable(f"{ref}: {fmt} files load only with trusted: true in the spec")
    try:
        if fmt == "joblib":
            import joblib

            return joblib.load(io.BytesIO(data))
        return pickle.loads(data)
    except Exception as exc:
        raise ModelUnavailable(
            f"{ref}: the {fmt} file cannot be loaded: {type(exc).__name__}: {exc}"
        ) from exc


def _load_skops(spec: ModelSpec, data: bytes, ref: str) -> Any:
    import skops.io as sio

    try:
        untrusted = list(sio.get_untrusted_types(data=data))
    except Exception as exc:
        raise ModelUnavailable(
            f"{ref}: {spec.model.file} is not a skops file ({type(exc).__name__}: {exc}); save the model"
            " with skops.io.dump (gateway.ml.register does)"
        ) from exc
    refused = [t for t in untrusted if t not in spec.model.trusted_types]
    if refused and not spec.model.trusted:
        raise ModelUnavailable(
            f"{ref}: {spec.model.file} holds types outside skops' safe set: {', '.join(refused)}. Loading"
            " them could run code; list them in model.trusted_types if you trust them."
        )
    try:
        return sio.loads(data, trusted=untrusted)
    except Exception as exc:
        raise ModelUnavailable(
            f"{ref}: the skops file cannot be loaded: {type(exc).__name__}: {exc}"
        ) from exc


def read_reference(spec: ModelSpec, files: dict[str, bytes]) -> Any:
    """The reference dataset as a DataFrame (None when the spec names none)."""
    if spec.reference is None:
        return None
    import pandas as pd

    return pd.read_csv(io.BytesIO(files[spec.reference.file]))
