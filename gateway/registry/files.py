"""Artifact files in the project: where each kind lives and how a file becomes a typed spec.

Specs may reference other files (prompt templates, model files) relative to the spec's own
directory; their bytes are part of the version's content hash.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from gateway.errors import ConfigError
from gateway.registry.hashing import canonical_data, content_hash
from gateway.yamlspec import load_spec

KIND_DIRS: dict[str, str] = {
    "prompt": "prompts",
    "router": "config/routers",
    "index": "config/indexes",
    "model": "config/models",
}
# Spec classes by import path, so a kind's module loads only when its files are read.
KIND_SPECS: dict[str, str] = {
    "prompt": "gateway.registry.specs:PromptSpec",
    "router": "gateway.registry.specs:RouterSpec",
    "index": "gateway.retrieval.spec:IndexSpec",
    "model": "gateway.ml.spec:ModelSpec",
}
TEXT_FILE_KINDS = frozenset({"prompt"})  # referenced files stored with the version (templates)


def spec_class(kind: str) -> type[BaseModel]:
    module, _, attr = KIND_SPECS[kind].partition(":")
    cls: type[BaseModel] = getattr(importlib.import_module(module), attr)
    return cls


@dataclass(frozen=True)
class ArtifactFile:
    kind: str
    name: str
    path: str  # relative to the project directory
    spec: BaseModel
    content_hash: str
    referenced: dict[str, bytes] = field(default_factory=dict)

    def stored_files(self) -> dict[str, str] | None:
        if self.kind not in TEXT_FILE_KINDS or not self.referenced:
            return None
        return {name: data.decode("utf-8") for name, data in self.referenced.items()}

    def spec_json(self) -> dict[str, object]:
        data: dict[str, object] = canonical_data(self.spec)
        return data


def artifact_paths(project_dir: Path, kind: str) -> list[Path]:
    folder = project_dir / KIND_DIRS[kind]
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def _relative(project_dir: Path, file: Path) -> str:
    try:
        return str(file.resolve().relative_to(project_dir.resolve()))
    except ValueError:
        return str(file)


def file_context(project_dir: Path) -> dict[str, Any]:
    """What artifact files are checked against beyond their own schema: the operator's egress rules in
    the project's config/gateway.yaml (hosts, key variables, headers, request parameters)."""
    from gateway.egress import project_egress, spec_context

    return spec_context(project_egress(project_dir))


def load_artifact(
    project_dir: Path, kind: str, file: Path, *, context: dict[str, Any] | None = None
) -> ArtifactFile:
    rel = _relative(project_dir, file)
    context = context if context is not None else file_context(project_dir)
    spec = load_spec(file, spec_class(kind), display=rel, context=context)
    name = getattr(spec, "name", None)
    if name != file.stem:
        raise ConfigError(f"name: {name!r} must match the file name {file.stem!r}", path=rel, line=1)
    referenced: dict[str, bytes] = {}
    lister = getattr(spec, "referenced_files", None)
    for ref in lister() if callable(lister) else []:
        target = (file.parent / ref).resolve()
        try:
            referenced[ref] = target.read_bytes()
        except OSError as exc:
            raise ConfigError(f"referenced file {ref!r} cannot be read: {exc.strerror}", path=rel) from exc
        if kind in TEXT_FILE_KINDS:
            try:
                referenced[ref].decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ConfigError(f"referenced file {ref!r} is not UTF-8 text", path=rel) from exc
    return ArtifactFile(kind, file.stem, rel, spec, content_hash(spec, referenced), referenced)


def load_artifacts(project_dir: Path, kinds: tuple[str, ...]) -> tuple[list[ArtifactFile], list[ConfigError]]:
    """Every artifact file of the given kinds; invalid ones are returned as errors, valid ones still load."""
    found: list[ArtifactFile] = []
    errors: list[ConfigError] = []
    try:
        context = file_context(project_dir)
    except ConfigError as exc:  # config/gateway.yaml itself is invalid: nothing can be checked
        return [], [exc]
    for kind in kinds:
        paths = artifact_paths(project_dir, kind)
        if not paths:
            continue
        try:
            spec_class(kind)
        except ImportError:
            errors.append(
                ConfigError(f"artifact kind {kind!r} is not available in this build", path=KIND_DIRS[kind])
            )
            continue
        for file in paths:
            try:
                found.append(load_artifact(project_dir, kind, file, context=context))
            except ConfigError as exc:
                errors.append(exc)
    names: dict[str, ArtifactFile] = {}
    for art in sorted(found, key=lambda a: a.kind != "router"):  # on a clash the router keeps its name
        if art.kind not in ("prompt", "router"):
            continue
        other = names.get(art.name)
        if other is not None and other.kind != art.kind:
            found = [a for a in found if a is not art]
            errors.append(
                ConfigError(
                    f"the bare name {art.name!r} is both a router ({other.path if other.kind == 'router' else art.path})"
                    f" and a prompt; rename one so that model={art.name!r} is never ambiguous",
                    path=art.path,
                    line=1,
                )
            )
            continue
        names[art.name] = art
    return found, errors
