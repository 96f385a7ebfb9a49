"""Parse YAML files into typed specs, with errors that name the file, the line and the field.

Every file a user writes (routers, prompts, indexes, models, policies, gateway.yaml) goes through
`load_spec`: a typo fails at load time as `config/routers/default.yaml:7: deployments.0.timout_s: ...`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from gateway.errors import ConfigError

M = TypeVar("M", bound=BaseModel)

# The names artifacts, deployments and metrics may take, and environment variable names.
NAME_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,127}$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


class StrictModel(BaseModel):
    """Base of every spec: unknown fields are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _node_for(root: yaml.Node | None, loc: tuple[int | str, ...]) -> yaml.Node | None:
    """Walk the composed YAML tree along a pydantic error location; return the deepest node found."""
    node = root
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = None
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                    match = (key, value)
                    break
            if match is None:
                return node
            # An unknown key is best reported at the key itself.
            node = match[1] if not isinstance(match[1], yaml.ScalarNode) else match[0]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return node
            node = node.value[part]
        else:
            return node
    return node


def format_validation_error(exc: ValidationError, root: yaml.Node | None, path: str) -> ConfigError:
    first = exc.errors()[0]
    loc = tuple(p for p in first["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    node = _node_for(root, loc)
    line = node.start_mark.line + 1 if node is not None else None
    field = ".".join(str(p) for p in loc) or "(top level)"
    extra = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown field (check its spelling; the spec does not allow it)"
    return ConfigError(f"{field}: {msg}{extra}", path=path, line=line)


def parse_yaml_text(text: str, path: str) -> tuple[Any, yaml.Node | None]:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        refuse_duplicate_keys(root, path)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        raise ConfigError(f"invalid YAML: {exc.problem}", path=path, line=line) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", path=path) from exc
    return data, root


MERGE_TAG = "tag:yaml.org,2002:merge"


def refuse_duplicate_keys(root: yaml.Node | None, path: str) -> None:
    """YAML keeps the last of two equal keys without a word; a spec says one thing per key, so refuse."""
    stack: list[tuple[yaml.Node, tuple[str, ...]]] = [(root, ())] if root is not None else []
    seen_nodes: set[int] = set()  # aliases share nodes: walk each once
    while stack:
        node, loc = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend((child, (*loc, str(i))) for i, child in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            first_line: dict[str, int] = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.tag != MERGE_TAG:
                    if key.value in first_line:
                        field = ".".join((*loc, key.value))
                        raise ConfigError(
                            f"{field}: duplicate key (also on line {first_line[key.value]}); YAML would keep"
                            " only the last one silently: remove one",
                            path=path,
                            line=key.start_mark.line + 1,
                        )
                    first_line[key.value] = key.start_mark.line + 1
                stack.append((value, (*loc, str(key.value) if isinstance(key, yaml.ScalarNode) else "?")))


def line_of(root: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """The line of the node at `loc` (or of its deepest existing parent); None without a tree."""
    node = _node_for(root, loc)
    return node.start_mark.line + 1 if node is not None else None


def _is_scalar(node: yaml.Node, value: str) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.value == value


def line_of_value(root: yaml.Node | None, key: str, value: str) -> int | None:
    """The line where `key: value` is written anywhere in the tree (e.g. which `file:` names a file)."""
    stack = [root] if root is not None else []
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if _is_scalar(k, key) and _is_scalar(v, value):
                    return int(v.start_mark.line) + 1
            stack.extend(reversed([v for _, v in node.value]))  # document order: the first mention wins
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(reversed(node.value))
    return None


def load_spec_text(
    text: str,
    model: type[M],
    path: str,
    *,
    default: dict[str, Any] | None = None,
    context: dict[str, Any] | None = None,
) -> M:
    """`context` reaches the spec's validators (e.g. the operator's egress rules a file is checked against)."""
    return load_spec_and_tree(text, model, path, default=default, context=context)[0]


def load_spec_and_tree(
    text: str,
    model: type[M],
    path: str,
    *,
    default: dict[str, Any] | None = None,
    context: dict[str, Any] | None = None,
) -> tuple[M, yaml.Node | None]:
    """The typed spec and the YAML tree it came from (for the line numbers of later errors)."""
    data, root = parse_yaml_text(text, path)
    if data is None:
        data = default if default is not None else {}
    if not isinstance(data, dict):
        raise ConfigError("the file must hold a mapping (key: value) at its top level", path=path, line=1)
    try:
        return model.model_validate(data, context=context), root
    except ValidationError as exc:
        raise format_validation_error(exc, root, path) from exc


def load_spec(
    file: Path, model: type[M], *, display: str | None = None, context: dict[str, Any] | None = None
) -> M:
    shown = display or str(file)
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError("the file is not valid UTF-8", path=shown) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror}", path=shown) from exc
    return load_spec_text(text, model, shown, context=context)
