"""Errors of the ML serving path, placed in the hierarchy drawn in `gateway/errors.py`:

OpsgateError
├── ModelUnavailable          503 the version cannot be served: its file is missing, tampered with
│                                 (hash mismatch) or unsafe to load (code model_untrusted: the operator
│                                 has not trusted it); says how to fix it
├── ExplanationFailed         503 the model scored the rows but SHAP could not explain them (nothing
│                                 was logged: the caller received no prediction ids)
└── ClientError
    ├── PermissionDenied
    │   └── ModelNotApproved  403 an unsafe file (pickle, ...) of a version no protected alias points at
    └── InvalidFields
        └── DataQualityError  422 rows break the input schema: names row, field and rule
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from gateway.errors import InvalidFields, OpsgateError, PermissionDenied

MAX_LISTED = 100


class ModelUnavailable(OpsgateError):
    status = 503
    type = "api_error"
    code = "model_unavailable"


class ModelNotApproved(PermissionDenied):
    code = "model_not_approved"


class ExplanationFailed(OpsgateError):
    status = 503
    type = "api_error"
    code = "explanation_failed"


@dataclass(frozen=True, slots=True)
class Violation:
    row: int
    field: str
    rule: str  # required | type | finite | min | max | categories | unknown_field
    message: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class DataQualityError(InvalidFields):
    """422: the first violation in the message and `param`, every violation (up to 100) in `violations`."""

    code = "data_quality"

    def __init__(self, violations: list[Violation]) -> None:
        first = violations[0]
        more = f" (and {len(violations) - 1} more violations)" if len(violations) > 1 else ""
        super().__init__(
            f"row {first.row}, field {first.field!r}, rule {first.rule}: {first.message}{more}",
            param=f"rows[{first.row}].{first.field}",
        )
        self.violations = violations

    def to_openai(self) -> dict[str, Any]:
        body = super().to_openai()
        body["error"]["violations"] = [v.as_dict() for v in self.violations[:MAX_LISTED]]
        return body
