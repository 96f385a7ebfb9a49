"""Data-quality checks: every request row against the model's input schema, before the model sees it.

Rules, in the order they are checked for a field:
    required       the column is missing (or null) and the field is not nullable
    type           the value is not of the field's type (a bool is not a number; 3.0 is an integer)
    finite         NaN or +/-inf in a number field
    min / max      outside the allowed range
    categories     not one of the allowed values
    unknown_field  a column the schema does not declare
The first three are hard (the row cannot be scored); the others are soft: under `on_violation: flag`
they are counted and returned while the row is still scored.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from gateway.ml.errors import Violation
from gateway.ml.spec import FieldSpec, ModelSpec

HARD_RULES = frozenset({"required", "type", "finite"})
_MISSING = object()
Check = Callable[[Any], tuple[str, str] | None]


def _type_check(kind: str) -> Callable[[Any], bool]:
    if kind == "number":
        return lambda v: isinstance(v, int | float) and not isinstance(v, bool)
    if kind == "integer":
        return lambda v: (
            (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())
        )
    if kind == "boolean":
        return lambda v: isinstance(v, bool)
    return lambda v: isinstance(v, str)


def field_check(field: FieldSpec) -> Check:
    """One closure per field: returns (rule, message) for the first rule the value breaks, else None."""
    is_type = _type_check(field.type)
    numeric = field.type in ("number", "integer")
    low, high = field.min, field.max
    allowed = set(field.categories) if field.categories is not None else None

    def check(value: Any) -> tuple[str, str] | None:
        if value is None or value is _MISSING:
            if field.nullable or (value is _MISSING and not field.required):
                return None
            return ("required", "is missing" if value is _MISSING else "is null")
        if numeric and isinstance(value, float) and not math.isfinite(value):
            return ("finite", f"{value} is not a finite number")
        if not is_type(value):
            return ("type", f"{shown(value)} is not {'an' if field.type == 'integer' else 'a'} {field.type}")
        if low is not None and value < low:
            return ("min", f"{value} is below the minimum {low:g}")
        if high is not None and value > high:
            return ("max", f"{value} is above the maximum {high:g}")
        if allowed is not None and value not in allowed:
            return ("categories", f"{shown(value)} is not one of {sorted(allowed, key=str)}")
        return None

    return check


class RowValidator:
    def __init__(self, spec: ModelSpec) -> None:
        self.checks = [(name, field_check(f)) for name, f in spec.inputs.items()]
        self.known = frozenset(spec.inputs)

    def validate(self, rows: list[Any]) -> list[Violation]:
        out: list[Violation] = []
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                out.append(
                    Violation(i, "*", "type", f"a row must be a JSON object of columns, not {shown(row)}")
                )
                continue
            for name, check in self.checks:
                broken = check(row.get(name, _MISSING))
                if broken is not None:
                    out.append(Violation(i, name, broken[0], broken[1]))
            if len(row) > len(self.known) or not self.known.issuperset(row):
                out.extend(_unknown(i, row, self.known))
        return out


def _unknown(i: int, row: dict[str, Any], known: frozenset[str]) -> list[Violation]:
    """Unknown columns: soft (flagged rows are scored and logged with them), unless a value is not flat:
    a list or an object would be logged as it came, however deep or large."""
    out = []
    for name, value in row.items():
        if name in known:
            continue
        if isinstance(value, dict | list):
            out.append(
                Violation(
                    i,
                    str(name),
                    "type",
                    f"is not a column of this model, and {shown(value)} is not a flat value",
                )
            )
        else:
            out.append(Violation(i, str(name), "unknown_field", "is not a column of this model"))
    return out


def shown(value: Any) -> str:
    """A caller's value as a message shows it: containers by kind and size (never repr'd: they may nest a
    thousand levels deep), strings and numbers repr'd and cut at 80 characters."""
    if isinstance(value, dict):
        return f"an object of {len(value)} keys"
    if isinstance(value, list):
        return f"a list of {len(value)} values"
    if isinstance(value, str) and len(value) > 80:
        value = value[:80]
    return f"{value!r:.80}"


def split(violations: list[Violation]) -> tuple[list[Violation], list[Violation]]:
    hard = [v for v in violations if v.rule in HARD_RULES]
    soft = [v for v in violations if v.rule not in HARD_RULES]
    return hard, soft


def coerce_csv_value(field: FieldSpec | None, text: str) -> Any:
    """CSV cells are text: read them as the field's type so the same rules apply as to JSON."""
    if text == "":
        return None
    if field is None or field.type == "string":
        return text
    if field.type == "boolean":
        low = text.strip().lower()
        return {"true": True, "false": False, "1": True, "0": False}.get(low, text)
    try:
        number = float(text)
    except ValueError:
        return text
    if field.type == "integer" and number.is_integer() and "." not in text:
        return int(number)
    return number
