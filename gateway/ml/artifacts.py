"""Model files: a content-addressed store under the data directory, integrity checks, safe loading.

A version's files are copied into `<data dir>/ml/store/<version hash>/` the first time their bytes are
seen to match the version's content hash, so the version stays servable (for rollback) after the file
in the project changes. Every load recomputes the hash from the spec and the bytes it is about to use:
a tampered file, in the project or in the store, is refused, never loaded.

Loading follows gateway/ml/trust.py: skops files whose types are all safe load with skops' safe loader;
pickle, joblib and other skops types run code on load, so they load only with the operator's trust and
once a protected alias points at the version (a `LoadGrant` says both). Every refusal says what to do.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import posixpath
from pathlib import Path
from typing import Any

from gateway.ml.errors import ModelNotApproved, ModelUnavailable
from gateway.ml.spec import ModelSpec
from gateway.ml.trust import LoadGrant
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


def load_estimator(spec: ModelSpec, data: bytes, ref: str, grant: LoadGrant | None = None) -> Any:
    """The estimator from the model file's bytes; `grant` None: only a safe file loads."""
    return load_model(spec, data, ref, grant)[0]


def load_model(spec: ModelSpec, data: bytes, ref: str, grant: LoadGrant | None = None) -> tuple[Any, bool]:
    """(estimator, whether loading it could run code: it is kept only while its version stays approved)."""
    grant = grant or LoadGrant.safe_only()
    name = spec.name  # the registry's name too: sync refuses a spec whose name is not its file's
    fmt = spec.model.format
    if fmt == "skops":
        return _load_skops(spec, data, ref, name, grant)
    _check_unsafe(grant, name, data, ref, f"{spec.model.file} is a {fmt} file, which runs code when loaded")
    try:
        if fmt == "joblib":
            import joblib

            return joblib.load(io.BytesIO(data)), True
        return pickle.loads(data), True
    except Exception as exc:
        raise ModelUnavailable(
            f"{ref}: the {fmt} file cannot be loaded: {type(exc).__name__}: {exc}"
        ) from exc


def _check_unsafe(grant: LoadGrant, name: str, data: bytes, ref: str, what: str) -> None:
    """Refuse to load a file that can run code unless the operator trusts it and the version is approved."""
    trusted = grant.trust.trusts(name, data)
    to = "staging" if "staging" in grant.protected or not grant.protected else grant.protected[0]
    promote = (
        f"such a version loads only once a protected alias ({', '.join(grant.protected)}) points at it:"
        f" `opsgate promote {ref.split('#', 1)[0]} --to {to}`"
    )
    if not trusted:
        digest = hashlib.sha256(data).hexdigest()
        raise ModelUnavailable(
            f"{ref}: {what}, and the operator has not trusted it. A model spec cannot vouch for itself (its"
            f" `trusted: true` counts for nothing): an operator lists the model in config/gateway.yaml,"
            f" `ml: {{trusted_models: [{name}]}}` or `sha256:{digest}`, and then {promote}. Or save the"
            " model with skops' safe types (gateway.ml.register does).",
            code="model_untrusted",
        )
    if not grant.approved:
        raise ModelNotApproved(
            f"{ref}: {what}; the operator trusts it, but {promote}. Evaluate candidates saved with"
            " skops' safe types instead.",
            param="model",
        )


def _load_skops(spec: ModelSpec, data: bytes, ref: str, name: str, grant: LoadGrant) -> tuple[Any, bool]:
    import skops.io as sio

    try:
        untrusted = list(sio.get_untrusted_types(data=data))
    except Exception as exc:
        raise ModelUnavailable(
            f"{ref}: {spec.model.file} is not a skops file ({type(exc).__name__}: {exc}); save the model"
            " with skops.io.dump (gateway.ml.register does)"
        ) from exc
    refused = [t for t in untrusted if t not in grant.trust.types]
    if refused:
        _check_unsafe(
            grant,
            name,
            data,
            ref,
            f"{spec.model.file} holds types outside skops' safe set ({', '.join(refused)}), which could run"
            " code when loaded (the operator may treat such types as safe for every model:"
            " `ml: {trusted_types: [...]}`)",
        )
    try:
        return sio.loads(data, trusted=untrusted), bool(refused)
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
