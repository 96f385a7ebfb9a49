"""What the bridged APIs share: strict parsing (an unknown or unsupported parameter is a 400 naming it,
never silently dropped) and the gateway's own fields, which pass through to the chat flow."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

from gateway.api_requests import GATEWAY_FIELDS, StrictBody, validate
from gateway.errors import InvalidRequest

M = TypeVar("M", bound=BaseModel)


class Strict(StrictBody):
    """A bridged API's body: unknown fields refused, values of the wrong type refused, never coerced
    (`"temperature": "0.5"` is not 0.5), as OpenAI and Anthropic answer."""

    model_config = ConfigDict(extra="forbid")


def parse(model: type[M], data: Any) -> M:
    """A body into its model; a bad or unknown field is a 400 `invalid_request_error` naming it in `param`."""
    return validate(model, data)


def unsupported(param: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"{param}: {why}", param=param, code="unsupported_parameter")


def gateway_fields(data: dict[str, Any]) -> dict[str, Any]:
    """The gateway's own fields (prompt_variables, opsgate, ...) as sent: they address the chat flow."""
    return {k: v for k, v in data.items() if k in GATEWAY_FIELDS}
