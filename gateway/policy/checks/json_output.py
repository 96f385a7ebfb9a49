"""Output JSON: when the request gives `response_format` (json_object or json_schema), the answer must
parse as JSON and, for json_schema, validate against the schema (jsonschema).

    - {type: json_output, mode: block}     # or flag

A failing answer is the upstream's fault: 502 `invalid_json_output` naming what is wrong (block), or a
flagged decision. A streamed answer has reached the caller before it can be judged: it is flagged only.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from gateway.egress.schemas import Unresolvable
from gateway.egress.schemas import validator as schema_validator
from gateway.errors import UpstreamError
from gateway.policy.base import CheckConfig, Finding, Payload, PolicyCheck, Subject, Verdict


class JsonOutputConfig(CheckConfig):
    type: Literal["json_output"]
    mode: Literal["block", "flag"] = "block"


@functools.lru_cache(maxsize=256)
def _validator(schema_json: bytes) -> Draft202012Validator | None:
    schema = orjson.loads(schema_json)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError:
        return None  # not ours to judge: the upstream accepted or refused the schema itself
    return schema_validator(schema)  # references resolve within the schema: nothing is fetched


def schema_of(response_format: Any) -> dict[str, Any] | None:
    if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
        return None
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    return schema if isinstance(schema, dict) else None


def problem(text: str, response_format: Any) -> str | None:
    """What is wrong with `text` under `response_format`, or None."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return "the answer is not valid JSON"
    schema = schema_of(response_format)
    if schema is None:
        if response_format.get("type") == "json_object" and not isinstance(value, dict):
            return "the answer is JSON but not an object"
        return None
    validator = _validator(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS))
    if validator is None:
        return None
    try:
        error = next(iter(validator.iter_errors(value)), None)
    except Unresolvable:
        return None  # a `$ref` outside the schema: not ours to judge (and never fetched)
    if error is None:
        return None
    path = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"the answer does not match the response_format schema at {path}: {error.message}"


class JsonOutput(PolicyCheck[JsonOutputConfig]):
    type = "json_output"
    config_model = JsonOutputConfig
    phase = 30
    needs_full_answer = True

    def check_output(self, subject: Subject, payload: Payload, request: Payload | None) -> Finding | None:
        response_format = request.body.get("response_format") if request and request.body else None
        if not isinstance(response_format, dict) or response_format.get("type") not in (
            "json_object",
            "json_schema",
        ):
            return None
        for slot in payload.slots:
            wrong = problem(slot.text, response_format)
            if wrong is None:
                continue
            verdict: Verdict = "blocked" if self.config.mode == "block" else "flagged"
            error = UpstreamError(
                f"{wrong} ({slot.where}), which the request's response_format requires (policy rule"
                f" {self.rule!r}, json_output); retry, or lower the temperature",
                retryable=False,
                code="invalid_json_output",
            )
            return Finding(verdict, wrong[:200], error, count=1)
        return Finding("allowed")
