"""The artifact kinds: one record per kind, read by everything that needs the kind list.

A kind says where its files live, which spec class parses them, whether its versions come from committed
files (`opsgate sync`) or from a build (`opsgate index build`), whether referenced files are stored as text
with the version, whether its bare name can be the `model` of a request, and which extra checks run on a
file when it is loaded (checks that belong to a higher layer, e.g. evaluation's view of a prompt's online
metrics, are named by import path, so the registry never imports them).

Kinds are an extension group like adapters, checks and metrics (gateway/extensions.py): a built-in kind is
one line in `extensions.BUILTINS[KINDS]`; a plugin registers an `ArtifactKind` under the entry point group
`opsgate.kinds`:

    [project.entry-points."opsgate.kinds"]
    dataset = "my_package.kind:KIND"

Adding a kind is then: a spec class (a `StrictModel` with `name`, and `referenced_files()` if it names
other files), one `ArtifactKind` record pointing at it, one line registering that record.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from pydantic import BaseModel

from gateway import extensions

Loc = tuple[int | str, ...]
# A load-time check: the parsed spec -> problems (the field's location in the file, what is wrong).
SpecCheck = Callable[[Any], list[tuple[Loc, str]]]


@dataclass(frozen=True)
class ArtifactKind:
    name: str  # as in refs: `prompt:docs_qa@3`
    folder: str  # project-relative folder of its spec files
    spec: str  # "module:Class" of its spec, imported only when a file of the kind is read
    source: Literal["git", "build"] = "git"  # git: `opsgate sync` registers committed files
    text_files: bool = False  # referenced files are text, stored with the version (templates)
    model_name: bool = False  # its bare name may be a request's `model` (routers, prompts)
    checks: Sequence[str] = field(default=())  # "module:function" SpecChecks run when a file loads

    def spec_class(self) -> type[BaseModel]:
        cls: type[BaseModel] = _import(self.spec)
        return cls

    def spec_checks(self) -> list[SpecCheck]:
        return [_import(path) for path in self.checks]


def _import(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


PROMPT = ArtifactKind(
    "prompt",
    "prompts",
    "gateway.prompts.spec:PromptSpec",
    text_files=True,
    model_name=True,
    checks=("gateway.evaluation.online:prompt_spec_problems",),
)
ROUTER = ArtifactKind("router", "config/routers", "gateway.routing.spec:RouterSpec", model_name=True)
INDEX = ArtifactKind("index", "config/indexes", "gateway.retrieval.spec:IndexSpec", source="build")
MODEL = ArtifactKind("model", "config/models", "gateway.ml.spec:ModelSpec")
# how a model is trained: gateway/ml/pipelines (docs/pipelines.md)
PIPELINE = ArtifactKind("pipeline", "config/pipelines", "gateway.ml.pipelines.spec:PipelineSpec")


@functools.cache
def registry() -> Mapping[str, ArtifactKind]:
    """Every kind by name: built-ins first, then installed plugins (which may not shadow a built-in)."""
    found = extensions.load(extensions.KINDS)
    for name, kind in found.items():
        if not isinstance(kind, ArtifactKind) or kind.name != name:
            raise TypeError(f"entry point {extensions.KINDS}:{name} must be an ArtifactKind named {name!r}")
    return MappingProxyType(found)


def get(name: str) -> ArtifactKind:
    return registry()[name]


def names() -> tuple[str, ...]:
    return tuple(registry())


def synced() -> tuple[str, ...]:
    """Kinds `opsgate sync` registers from committed files."""
    return tuple(k.name for k in registry().values() if k.source == "git")


def built() -> tuple[str, ...]:
    """Kinds registered by a build (sync only validates their files)."""
    return tuple(k.name for k in registry().values() if k.source == "build")
