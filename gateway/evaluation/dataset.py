"""Datasets: JSONL, one case a line, read into `EvalCase`s (errors name the file and line).

Our field names: id, question, reference, references, reference_contexts, reference_context_ids,
variables, metadata. A suite's `dataset.fields` maps them to the file's own keys (SQuAD's qa.jsonl has
reference_answer, answers, reference_context, document_id); any other key of a line lands in metadata.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import orjson

from gateway.errors import ConfigError
from gateway.evaluation.metrics.base import EvalCase
from gateway.evaluation.spec import CaseField, DatasetSpec
from gateway.registry.tree import UnsafePath, is_under, normalise, own_dirs, read_project_file

OUR_FIELDS: tuple[str, ...] = get_args(CaseField)


@dataclass(frozen=True)
class Dataset:
    path: Path
    content_hash: str  # sha256 of the lines evaluated (after `where` and `limit`), one per line
    cases: list[EvalCase]


def resolve_path(
    spec: DatasetSpec, project_dir: Path, suite_dir: Path, data_dir: Path | None = None
) -> tuple[Path, str]:
    """Where the dataset is, as (directory, path below it): relative to the project directory, else to
    the suite's own directory. Read by `load_dataset` from that directory without following links; never
    in what opsgate keeps for itself (its data directory, with the spooled log rows)."""
    try:
        rel = normalise(spec.path)
    except UnsafePath as exc:
        raise ConfigError(f"dataset.path: {spec.path!r} {exc.reason}") from None
    for base in (project_dir, suite_dir):
        if os.path.lexists(base / rel):
            found = (base / rel).absolute()
            if is_under(
                Path(os.path.relpath(found, project_dir)).as_posix(), own_dirs(project_dir, data_dir)
            ):
                raise ConfigError(f"dataset.path: {spec.path!r} is in a folder opsgate keeps for itself")
            return base, rel
    return project_dir, rel


def _strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, list | tuple):
        return tuple(str(v) for v in value if v is not None)
    return (str(value),)


def to_case(line: dict[str, Any], fields: dict[str, str], number: int) -> EvalCase:
    keys = {ours: fields.get(ours, ours) for ours in OUR_FIELDS}
    used = set(keys.values())
    question = line.get(keys["question"])
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"no question: the key {keys['question']!r} must hold a non-empty string")
    reference = line.get(keys["reference"])
    variables = line.get(keys["variables"]) or {}
    metadata = line.get(keys["metadata"]) or {}
    if not isinstance(variables, dict) or not isinstance(metadata, dict):
        raise ValueError("variables and metadata must be JSON objects")
    extra = {k: v for k, v in line.items() if k not in used}
    return EvalCase(
        id=str(line.get(keys["id"]) or f"line-{number}"),
        question=question,
        reference=None if reference is None else str(reference),
        references=_strings(line.get(keys["references"])),
        reference_contexts=_strings(line.get(keys["reference_contexts"])),
        reference_context_ids=_strings(line.get(keys["reference_context_ids"])),
        variables=dict(variables),
        metadata={**extra, **metadata},
    )


def load_dataset(spec: DatasetSpec, root: Path, rel: str, *, display: str | None = None) -> Dataset:
    """The cases of `rel` under `root`: a regular file reached through no link (a committed link to
    /proc/self/environ or the data directory's admin.key is refused, like every file an author names)."""
    path = root / rel
    shown = display or str(path)
    try:
        raw = read_project_file(root, rel)
    except (
        UnsafePath
    ) as exc:  # the suite's fault: reported at its dataset line (gateway/evaluation/service.py)
        raise ConfigError(f"dataset.path: {spec.path!r} {exc.reason}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read the dataset: {exc.strerror}", path=shown) from exc
    cases: list[EvalCase] = []
    seen: set[str] = set()
    digest = hashlib.sha256()  # of the lines evaluated: `where` and `limit` change it, other lines do not
    for number, text in enumerate(raw.splitlines(), start=1):
        if not text.strip():
            continue
        try:
            line = orjson.loads(text)
            if not isinstance(line, dict):
                raise ValueError("each line must be a JSON object")
            if any(line.get(k) != v for k, v in spec.where.items()):
                continue
            case = to_case(line, {str(k): v for k, v in spec.fields.items()}, number)
        except (orjson.JSONDecodeError, ValueError) as exc:
            raise ConfigError(str(exc), path=shown, line=number) from exc
        if case.id in seen:
            raise ConfigError(f"case id {case.id!r} appears twice", path=shown, line=number)
        seen.add(case.id)
        cases.append(case)
        digest.update(text.strip() + b"\n")
        if spec.limit is not None and len(cases) >= spec.limit:
            break
    if not cases:
        raise ConfigError("the dataset has no cases (after `where`)", path=shown)
    return Dataset(path, digest.hexdigest(), cases)
