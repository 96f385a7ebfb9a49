"""Artifact files in the project: where each kind lives and how a file becomes a typed spec."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from gateway.errors import ConfigError
from gateway.registry.hashing import content_hash
from gateway.registry.specs import RouterSpec
from gateway.yamlspec import load_spec

KIND_DIRS: dict[str, str] = {"router": "config/routers"}
KIND_SPECS: dict[str, type[BaseModel]] = {"router": RouterSpec}


@dataclass(frozen=True)
class ArtifactFile:
    kind: str
    name: str
    path: str  # relative to the project directory
    spec: BaseModel
    content_hash: str


def artifact_paths(project_dir: Path, kind: str) -> list[Path]:
    folder = project_dir / KIND_DIRS[kind]
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def load_artifact(project_dir: Path, kind: str, file: Path) -> ArtifactFile:
    rel = str(file.relative_to(project_dir)) if file.is_relative_to(project_dir) else str(file)
    spec = load_spec(file, KIND_SPECS[kind], display=rel)
    name = getattr(spec, "name", None)
    if name != file.stem:
        raise ConfigError(f"name: {name!r} must match the file name {file.stem!r}", path=rel, line=1)
    return ArtifactFile(kind, file.stem, rel, spec, content_hash(spec))


def load_artifacts(project_dir: Path, kinds: tuple[str, ...]) -> tuple[list[ArtifactFile], list[ConfigError]]:
    """Every artifact file of the given kinds; invalid ones are returned as errors, valid ones still load."""
    found: list[ArtifactFile] = []
    errors: list[ConfigError] = []
    for kind in kinds:
        for file in artifact_paths(project_dir, kind):
            try:
                found.append(load_artifact(project_dir, kind, file))
            except ConfigError as exc:
                errors.append(exc)
    return found, errors
