"""Artifact files in the project: where each kind lives and how a file becomes a typed spec.

Specs may reference other files (prompt templates, model files) relative to the spec's own
directory; their bytes are part of the version's content hash. Every file is read through a `Tree`
(gateway/registry/tree.py): from git at a commit, or from the working tree without following links.
A referenced file that is missing, empty, a link, not a regular file or (for text files) not UTF-8 is
an error naming the spec file and the line that references it.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from gateway import kinds
from gateway.errors import ConfigError
from gateway.registry.hashing import canonical_data, content_hash
from gateway.registry.tree import Tree, WorkingTree
from gateway.yamlspec import line_of, line_of_value, load_spec_and_tree

SPEC_SUFFIXES = (".yaml", ".yml")


def spec_class(kind: str) -> type[BaseModel]:
    return kinds.get(kind).spec_class()


@dataclass(frozen=True)
class ArtifactFile:
    kind: str
    name: str
    path: str  # relative to the project directory
    spec: BaseModel
    content_hash: str
    referenced: dict[str, bytes] = field(default_factory=dict)
    node: yaml.Node | None = field(default=None, compare=False, repr=False)  # for line numbers

    def stored_files(self) -> dict[str, str] | None:
        if not kinds.get(self.kind).text_files or not self.referenced:
            return None
        return {name: data.decode("utf-8") for name, data in self.referenced.items()}

    def spec_json(self) -> dict[str, object]:
        data: dict[str, object] = canonical_data(self.spec)
        return data

    def line_of(self, *loc: int | str) -> int | None:
        """The line of a field of this file (e.g. `line_of("retrieval", "index")`)."""
        return line_of(self.node, loc)

    def referenced_paths(self) -> set[str]:
        """Project-relative paths of the files this artifact references."""
        return {posixpath.normpath(posixpath.join(posixpath.dirname(self.path), r)) for r in self.referenced}


def artifact_paths(project_dir: Path, kind: str) -> list[Path]:
    """The spec files of a kind in the working tree (links included: reading them is refused, loudly).
    A kind's folder that is itself a link holds nothing (`load_artifacts` reports it)."""
    tree = WorkingTree(project_dir)
    try:
        return [tree.root / p for p in spec_files(tree, kind)]
    except ConfigError:
        return []


def spec_files(tree: Tree, kind: str) -> list[str]:
    return [p for p in tree.files(kinds.get(kind).folder) if p.endswith(SPEC_SUFFIXES)]


def _relative(project_dir: Path, file: Path) -> str:
    try:
        return file.relative_to(project_dir.resolve()).as_posix()
    except ValueError:
        pass
    try:
        return file.relative_to(project_dir).as_posix()
    except ValueError:
        return str(file)


def file_context(project_dir: Path) -> dict[str, Any]:
    """What artifact files are checked against beyond their own schema: the operator's egress rules in
    the project's config/gateway.yaml (hosts, key variables, headers, request parameters)."""
    from gateway.egress import spec_context
    from gateway.settings import project_egress

    return spec_context(project_egress(project_dir))


def load_artifact(
    project_dir: Path, kind: str, file: Path, *, context: dict[str, Any] | None = None
) -> ArtifactFile:
    """One artifact file of the working tree (no link followed)."""
    tree = WorkingTree(project_dir)
    context = context if context is not None else file_context(project_dir)
    rel = _relative(project_dir, file)
    _, clashes = _without_suffix_clashes([p for p in spec_files(tree, kind) if _stem(p) == _stem(rel)])
    if clashes:
        raise clashes[0]
    return load_artifact_from(tree, kind, rel, context=context)


def _stem(rel: str) -> str:
    return posixpath.splitext(rel)[0]


def load_artifact_from(
    tree: Tree, kind: str, rel: str, *, context: dict[str, Any] | None = None
) -> ArtifactFile:
    """One artifact file, and the files it references, read from `tree`. `context` reaches the spec's
    validators (see `file_context`)."""
    text = _text(tree.read(rel), rel)
    if not text.strip():
        raise ConfigError("the file is empty; it must hold the artifact's spec", path=rel)
    spec, node = load_spec_and_tree(text, spec_class(kind), rel, context=context)
    stem = posixpath.splitext(posixpath.basename(rel))[0]
    name = getattr(spec, "name", None)
    if name != stem:
        raise ConfigError(f"name: {name!r} must match the file name {stem!r}", path=rel, line=1)
    _raise_check_problems(kind, spec, node, rel)
    referenced: dict[str, bytes] = {}
    lister = getattr(spec, "referenced_files", None)
    for ref in lister() if callable(lister) else []:
        referenced[ref] = _referenced_bytes(tree, kind, rel, node, ref)
    return ArtifactFile(kind, stem, rel, spec, content_hash(spec, referenced), referenced, node)


def _raise_check_problems(kind: str, spec: BaseModel, node: yaml.Node | None, rel: str) -> None:
    """The kind's load-time checks (gateway/kinds.py); the first problem is reported at its line."""
    for check in kinds.get(kind).spec_checks():
        for loc, message in check(spec):
            field_path = ".".join(str(part) for part in loc)
            raise ConfigError(f"{field_path}: {message}", path=rel, line=line_of(node, loc))


def _text(data: bytes, rel: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"the file is not valid UTF-8 (byte {exc.start})", path=rel) from exc


def _referenced_bytes(tree: Tree, kind: str, rel: str, node: yaml.Node | None, ref: str) -> bytes:
    """A referenced file's bytes; any problem is reported at the spec line that names the file."""
    line = line_of_value(node, "file", ref)
    target = posixpath.join(posixpath.dirname(rel), ref)
    try:
        data = tree.read(target)
    except ConfigError as exc:
        raise ConfigError(f"file: {ref!r} ({target}) {exc.detail}", path=rel, line=line) from None
    if not data:
        raise ConfigError(f"file: {ref!r} ({target}) is empty", path=rel, line=line)
    if kinds.get(kind).text_files:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"file: {ref!r} ({target}) is not UTF-8 text (byte {exc.start})", path=rel, line=line
            ) from exc
    return data


def load_artifacts(
    project_dir: Path, kind_names: tuple[str, ...], tree: Tree | None = None
) -> tuple[list[ArtifactFile], list[ConfigError]]:
    """Every artifact file of the given kinds (from the working tree unless `tree` is given); invalid
    ones are returned as errors, valid ones still load."""
    tree = tree or WorkingTree(project_dir)
    found: list[ArtifactFile] = []
    errors: list[ConfigError] = []
    try:
        context = file_context(project_dir)
    except ConfigError as exc:  # config/gateway.yaml itself is invalid: nothing can be checked
        return [], [exc]
    for kind in kind_names:
        try:
            paths = spec_files(tree, kind)
        except ConfigError as exc:  # the kind's folder is a link: nothing in it is read
            errors.append(exc)
            continue
        if not paths:
            continue
        try:
            spec_class(kind)
        except ImportError:
            errors.append(
                ConfigError(
                    f"artifact kind {kind!r} is not available in this build", path=kinds.get(kind).folder
                )
            )
            continue
        paths, clashes = _without_suffix_clashes(paths)
        errors.extend(clashes)
        for rel in paths:
            try:
                found.append(load_artifact_from(tree, kind, rel, context=context))
            except ConfigError as exc:
                errors.append(exc)
    found, clashes = _without_bare_name_clashes(found)
    return found, errors + clashes


def _without_suffix_clashes(paths: list[str]) -> tuple[list[str], list[ConfigError]]:
    """`x.yaml` beside `x.yml` would both claim the name `x`: neither is loaded."""
    by_stem: dict[str, list[str]] = {}
    for rel in paths:
        by_stem.setdefault(posixpath.splitext(rel)[0], []).append(rel)
    errors = [
        ConfigError(
            f"{' and '.join(same)} both define {posixpath.basename(stem)!r}; keep one of them",
            path=same[-1],
            line=1,
        )
        for stem, same in by_stem.items()
        if len(same) > 1
    ]
    return [same[0] for same in by_stem.values() if len(same) == 1], errors


def _without_bare_name_clashes(found: list[ArtifactFile]) -> tuple[list[ArtifactFile], list[ConfigError]]:
    errors: list[ConfigError] = []
    names: dict[str, ArtifactFile] = {}
    for art in sorted(found, key=lambda a: a.kind != "router"):  # on a clash the router keeps its name
        if not kinds.get(art.kind).model_name:
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
